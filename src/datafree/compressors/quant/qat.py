"""Quantization-aware fine-tuning by distillation: learnable step sizes (LSQ-style), weights trained or their integers
frozen, plus the KD loop."""
from __future__ import annotations

import dataclasses
from typing import Optional

import torch
import torch.nn as nn

from ...core.config import Config, opt
from ...core.errors import DatafreeError
from ...data.base import TensorData
from ...kd.loop import KDConfig, distill_
from .graph import act_quantizers, tensor_quants
from .layers import FLOAT_BITS, QuantLayer, as_parameter_, quant_layers
from .quantizer import WeightRounding


@dataclasses.dataclass
class FinetuneConfig(Config):
    """KD fine-tuning of the quantized model (its steps and schedule are the KD config's)."""

    weights: str = opt("train", "KD fine-tuning (--finetune-steps/--finetune-epochs): train = integer weights move "
                                "through the straight-through estimator with step sizes and biases; frozen = the integer "
                                "weights stay as calibration/reconstruction left them (the learned rounding is kept) and "
                                "only step sizes and biases train", cli=True, choices=("train", "frozen"),
                       label="finetune_weights")


def enable_learned_steps_(qmodel: nn.Module) -> list[nn.Parameter]:
    """Make weight and input step sizes trainable (initialized from calibration); returns them."""
    out = []
    for q in quant_layers(qmodel):
        if q.w_bits < FLOAT_BITS:
            as_parameter_(q, "w_scale")
            out.append(q.w_scale)
        if q.a_bits < FLOAT_BITS and q.act_quant:
            as_parameter_(q, "a_scale")
            out.append(q.a_scale)
    for t in tensor_quants(qmodel, own_only=True):
        if t.act_quant:
            as_parameter_(t, "a_scale")
            out.append(t.a_scale)
    return out


class FrozenRounding(WeightRounding):
    """Fixed integer weights: returns the integers it was built with, whatever the float weight (no gradient to it)."""

    def __init__(self, k: torch.Tensor) -> None:
        super().__init__()
        self.k = k  # a plain attribute, not state: baked back into the weight when fine-tuning ends

    def forward(self, w_over_s: torch.Tensor) -> torch.Tensor:
        return self.k


def freeze_integer_weights_(qmodel: nn.Module) -> list[QuantLayer]:
    """Fix every sub-float layer's integer weights at their current rounding (the weights stop training); returns them."""
    out = []
    for q in quant_layers(qmodel):
        if q.w_bits >= FLOAT_BITS:
            continue
        with torch.no_grad():
            k = q.weight_ints()
        q.set_rounding(FrozenRounding(k))
        q.weight.requires_grad_(False)
        out.append(q)
    return out


def unfreeze_integer_weights_(layers: list[QuantLayer]) -> None:
    """Write each frozen layer's integers at its (possibly learned) step size into the weight; back to round-to-nearest."""
    for q in layers:
        assert isinstance(q.rounding, FrozenRounding)
        q.bake_rounding()
        q.weight.requires_grad_(True)


def finetune_quantized_(qmodel: nn.Module, teacher: nn.Module, data: TensorData, config: Optional[KDConfig] = None,
                        val: Optional[TensorData] = None, progress: bool = True, weights: str = "train") -> list[dict]:
    """KD fine-tuning of a calibrated quantized model in place: step sizes and biases, and the weights unless
    `weights` is "frozen" (then the integer weights, e.g. a learned rounding, are kept exactly)."""
    if weights not in ("train", "frozen"):
        raise DatafreeError(f"fine-tuning weights must be train or frozen, got {weights!r}")
    enable_learned_steps_(qmodel)
    for q in quant_layers(qmodel):
        with torch.no_grad():
            q.w_scale.clamp_(min=1e-8)
    frozen = freeze_integer_weights_(qmodel) if weights == "frozen" else []
    try:
        hist = distill_(qmodel, teacher, data, config, val=val, progress=progress)
    finally:
        with torch.no_grad():
            for q in quant_layers(qmodel):
                q.w_scale.clamp_(min=1e-8)
            for q in act_quantizers(qmodel):
                q.a_scale.clamp_(min=1e-8)
        unfreeze_integer_weights_(frozen)
    return hist
