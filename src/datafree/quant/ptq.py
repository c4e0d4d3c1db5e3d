"""Post-training quantization: fold BN, quantize weights, calibrate input ranges, re-estimate BN."""
from __future__ import annotations

import copy
import dataclasses
from typing import Optional

import torch
import torch.nn as nn

from ..config import Config, check
from ..data.base import TensorData
from ..models.loading import input_spec_of
from ..utils import model_device
from .layers import FLOAT_BITS, QuantLayer
from .prepare import trace_layers, wrap_layers_
from .quantizer import RangeObserver


def _bits_ok(b: int) -> bool:
    return 2 <= b <= 8 or b == FLOAT_BITS


@dataclasses.dataclass
class QuantConfig(Config):
    """Simulated PTQ settings."""

    w_bits: int = 8
    a_bits: int = 8
    quantize_first_last: bool = False  # False keeps the first and last layer at `first_last_bits`
    first_last_bits: int = 8
    weight_method: str = "mse"  # per-channel clipping: mse | minmax
    act_method: str = "mse"  # input range: mse | percentile | minmax
    percentile: float = 99.99
    bn_reestimate: bool = False
    fold_bn: bool = True
    num_calib: int = 512
    batch_size: int = 128
    seed: int = 0

    def validate(self) -> None:
        for k in ("w_bits", "a_bits", "first_last_bits"):
            v = getattr(self, k)
            check(_bits_ok(v), f"{k.replace('_', '-')} must be between 2 and 8 (or 32 for float), got {v}")
        check(self.weight_method in ("mse", "minmax"), f"weight method must be mse or minmax, got {self.weight_method!r}")
        check(self.act_method in ("mse", "percentile", "minmax"),
              f"activation range method must be mse, percentile or minmax, got {self.act_method!r}")
        check(0 < self.percentile <= 100, f"percentile must be in (0, 100], got {self.percentile}")
        check(self.num_calib >= 1, f"num-calib must be >= 1, got {self.num_calib}")
        check(self.batch_size >= 1, f"batch size must be >= 1, got {self.batch_size}")


def quant_layers(model: nn.Module) -> list[QuantLayer]:
    """All QuantLayers of a model, in module order."""
    return [m for m in model.modules() if isinstance(m, QuantLayer)]


def make_plan(model: nn.Module, cfg: QuantConfig) -> list[dict]:
    """Which layers to quantize at which bits, and which BN each one folds."""
    spec = input_spec_of(model)
    example = torch.zeros((2, *spec.shape), device=model_device(model))
    layers = trace_layers(model, example)
    plan = []
    for i, (name, bn) in enumerate(layers):
        edge = i == 0 or i == len(layers) - 1
        wb, ab = (cfg.first_last_bits, cfg.first_last_bits) if edge and not cfg.quantize_first_last else (cfg.w_bits, cfg.a_bits)
        plan.append({"name": name, "bn": bn if cfg.fold_bn else None, "w_bits": wb, "a_bits": ab})
    return plan


@torch.no_grad()
def _run(model: nn.Module, data: TensorData, batch_size: int) -> None:
    dev = model_device(model)
    for xb in data.batches(batch_size):
        model(xb.to(dev))


def calibrate_activations_(model: nn.Module, data: TensorData, cfg: QuantConfig) -> None:
    """Observe every QuantLayer's input on `data` (earlier inputs already quantized if calibrated) and set ranges."""
    layers = quant_layers(model)
    was = [q.act_quant for q in layers]
    for q in layers:
        q.act_quant = False
        q.observer = RangeObserver(cfg.act_method, cfg.percentile)
    try:
        _run(model, data, cfg.batch_size)
        for q in layers:
            lo, hi = q.observer.range(q.a_bits)  # type: ignore[union-attr]
            q.set_act_range(lo, hi)
    finally:
        for q, w in zip(layers, was):
            q.observer = None
            if not q.act_quant:
                q.act_quant = w


def reestimate_bn_(model: nn.Module, data: TensorData, batch_size: int = 128) -> None:
    """Re-estimate BN statistics of a quantized model on `data` (folded and unfolded BN alike)."""
    layers = quant_layers(model)
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    saved = [(m.momentum, m.training) for m in bns]
    for q in layers:
        q.begin_bn_reestimate()
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    try:
        _run(model, data, batch_size)
    finally:
        for m, (mom, tr) in zip(bns, saved):
            m.momentum = mom
            m.train(tr)
        for q in layers:
            q.end_bn_reestimate()


def prepare_quantized(model: nn.Module, cfg: QuantConfig) -> tuple[nn.Module, list[dict]]:
    """A deep copy of `model` with QuantLayers (BN folded, weight scales set) and the plan used."""
    qm = copy.deepcopy(model).eval()
    plan = make_plan(qm, cfg)
    for q in wrap_layers_(qm, plan):
        q.set_weight_scales(cfg.weight_method)
    qm.quant_plan = plan  # type: ignore[attr-defined]
    qm.quant_config = cfg  # type: ignore[attr-defined]
    return qm, plan


def quantize(model: nn.Module, calib: TensorData, config: Optional[QuantConfig] = None,
             bn_data: Optional[TensorData] = None) -> nn.Module:
    """Return a fake-quantized copy of `model` calibrated on `calib` (the model is not changed)."""
    cfg = config or QuantConfig()
    data = calib.subset(cfg.num_calib, cfg.seed)
    qm, _ = prepare_quantized(model, cfg)
    calibrate_activations_(qm, data, cfg)
    if cfg.bn_reestimate:
        reestimate_bn_(qm, (bn_data or calib).subset(cfg.num_calib, cfg.seed), cfg.batch_size)
        for q in quant_layers(qm):
            q.set_weight_scales(cfg.weight_method)
        calibrate_activations_(qm, data, cfg)
    return qm.eval()
