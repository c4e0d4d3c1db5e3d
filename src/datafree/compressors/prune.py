"""Pruning: global magnitude (unstructured) and filter pruning that removes channels (structured), plus FLOP counting."""
from __future__ import annotations

import copy
import dataclasses
from typing import Any, Optional

import torch
import torch.nn as nn

from ..core.config import Config, check
from ..core.errors import DatafreeError, first_line
from ..core.schema import Schema
from ..core.utils import eval_modes
from ..data.source import SourceLike
from ..kd.loop import KDConfig
from ..kd.run import distill_student_
from ..models.measure import count_flops_params  # noqa: F401  (re-exported: prune reports FLOPs)
from ..models.record import record_of
from ..models.resize import PRUNED_MARKER, mark_pruned_, resize_to_state_dict_
from .base import record_transform, register_compressor

# -- unstructured -------------------------------------------------------------------------------

def _weights(model: nn.Module) -> list[tuple[nn.Module, str]]:
    return [(m, "weight") for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def prune_unstructured_(model: nn.Module, sparsity: float) -> nn.Module:
    """Zero the `sparsity` fraction of smallest-magnitude conv/linear weights (one global threshold); masks stay on for fine-tuning."""
    import torch.nn.utils.prune as tprune

    _check_sparsity(sparsity)
    tprune.global_unstructured(_weights(model), pruning_method=tprune.L1Unstructured, amount=float(sparsity))
    return model


def finalize_unstructured_(model: nn.Module) -> nn.Module:
    """Make masks permanent (weights hold the zeros; no reparametrization left)."""
    import torch.nn.utils.prune as tprune

    for m, name in _weights(model):
        if tprune.is_pruned(m) and hasattr(m, name + "_mask"):
            tprune.remove(m, name)
    return model


# -- structured ---------------------------------------------------------------------------------

@dataclasses.dataclass
class Chain:
    """A conv whose output channels feed only one other conv (through optional BN and ReLU): removable channels."""

    conv: str
    bn: Optional[str]
    next_conv: str


_PASS = {"relu", "relu_", "relu6", "leaky_relu", "silu", "gelu", "max_pool2d", "avg_pool2d", "dropout"}  # per-channel ops


def _is_act(node, modules: dict) -> bool:
    if node.op == "call_function":
        return getattr(node.target, "__name__", "") in _PASS
    if node.op == "call_method":
        return str(node.target) in _PASS
    if node.op == "call_module":
        return isinstance(modules[node.target], (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.SiLU, nn.GELU, nn.MaxPool2d,
                                                 nn.AvgPool2d, nn.Dropout))
    return False


def prunable_chains(model: nn.Module) -> list[Chain]:
    """Conv -> [BN] -> [activation] -> conv paths with no other consumer, found by tracing the model with torch.fx."""
    import torch.fx

    try:
        with eval_modes(model):
            gm = torch.fx.symbolic_trace(model)
    except Exception as e:
        raise DatafreeError(f"structured pruning needs a model torch.fx can trace ({first_line(e, 120)}); "
                            "use --unstructured for this model") from None
    modules = dict(model.named_modules())
    chains = []
    for node in gm.graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(node.target), nn.Conv2d):
            continue
        conv = modules[node.target]
        if conv.groups != 1:
            continue
        cur, bn = node, None
        while True:
            users = list(cur.users)
            if len(users) != 1:
                break
            u = users[0]
            if u.op == "call_module" and isinstance(modules.get(u.target), nn.BatchNorm2d) and bn is None and cur is node:
                bn, cur = u.target, u
            elif _is_act(u, modules) and len(u.args) >= 1 and u.args[0] is cur:
                cur = u
            elif (u.op == "call_module" and isinstance(modules.get(u.target), nn.Conv2d)
                  and modules[u.target].groups == 1 and u.args[0] is cur):
                chains.append(Chain(node.target, bn, u.target))
                break
            else:
                break
    return chains


def _importance(conv: nn.Conv2d, bn: Optional[nn.BatchNorm2d]) -> torch.Tensor:
    """L1 norm of each output filter after BN folding (|γ|/σ scales the filter)."""
    imp = conv.weight.detach().abs().flatten(1).sum(1)
    if bn is not None:
        imp = imp * (bn.weight.detach().abs() / torch.sqrt(bn.running_var + bn.eps))
    return imp


def _take(param: nn.Parameter | torch.Tensor, idx: torch.Tensor, dim: int) -> torch.Tensor:
    return param.detach().index_select(dim, idx.to(param.device)).clone()


def _keep_channels(conv: nn.Conv2d, bn: Optional[nn.BatchNorm2d], nxt: nn.Conv2d, keep: torch.Tensor) -> None:
    conv.weight = nn.Parameter(_take(conv.weight, keep, 0))
    if conv.bias is not None:
        conv.bias = nn.Parameter(_take(conv.bias, keep, 0))
    conv.out_channels = len(keep)
    if bn is not None:
        bn.weight = nn.Parameter(_take(bn.weight, keep, 0))
        bn.bias = nn.Parameter(_take(bn.bias, keep, 0))
        bn.running_mean = _take(bn.running_mean, keep, 0)
        bn.running_var = _take(bn.running_var, keep, 0)
        bn.num_features = len(keep)
    nxt.weight = nn.Parameter(_take(nxt.weight, keep, 1))
    nxt.in_channels = len(keep)


def prune_structured_(model: nn.Module, sparsity: float) -> list[dict]:
    """Remove the `sparsity` fraction of output channels (lowest folded L1 norm) of every prunable conv; returns what was cut."""
    _check_sparsity(sparsity)
    mods = dict(model.named_modules())
    chains = prunable_chains(model)
    if not chains:
        raise DatafreeError("no prunable conv->conv channel path found in this model; use --unstructured")
    report = []
    for c in chains:
        conv, nxt = mods[c.conv], mods[c.next_conv]
        bn = mods[c.bn] if c.bn else None
        n = conv.out_channels
        k = max(1, int(round(n * (1.0 - sparsity))))
        keep = _importance(conv, bn).topk(k).indices.sort().values  # type: ignore[arg-type]
        _keep_channels(conv, bn, nxt, keep)  # type: ignore[arg-type]
        report.append({"conv": c.conv, "channels": n, "kept": k})
    mark_pruned_(model)
    return report


def pruned_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """State dict marked so `load_model(name, weights=...)` reshapes the fresh model to the pruned channel counts."""
    sd = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    sd[PRUNED_MARKER] = torch.tensor(1)
    return sd


@dataclasses.dataclass
class PruneConfig(Config):
    """Pruning: remove `sparsity` of the channels (structured) or weights (unstructured); fine-tuning by KD is separate."""

    sparsity: float = 0.5
    structured: bool = True

    def validate(self) -> None:
        _check_sparsity(self.sparsity)


def prune_(model: nn.Module, config: PruneConfig) -> list[dict]:
    """Prune `model` in place as configured (unstructured masks stay on for fine-tuning); returns what was cut."""
    if config.structured:
        return prune_structured_(model, config.sparsity)
    prune_unstructured_(model, config.sparsity)
    return []


def finish_pruning_(model: nn.Module, config: PruneConfig, cut: Optional[list[dict]] = None) -> nn.Module:
    """Make unstructured masks permanent and record the transform (structure is rebuilt from the state dict)."""
    if not config.structured:
        finalize_unstructured_(model)
    return record_transform(model, "prune", config, channels=[c["kept"] for c in cut or []])


def _apply(model: nn.Module, data: Optional[SourceLike], config: PruneConfig, kd: Optional[KDConfig] = None,
           progress: bool = False, **run: Any) -> nn.Module:
    """A pruned copy of `model`, fine-tuned by the resumable KD run from it when `kd` has steps (keywords `run`:
    checkpoint_dir, val, overwrite, ...); its report has FLOPs and parameters before and after."""
    before = count_flops_params(model)
    student = copy.deepcopy(model)
    cut = prune_(student, config)
    summary: dict[str, Any] = {}
    if kd is not None and kd.steps > 0:
        if data is None:
            raise DatafreeError("fine-tuning a pruned model needs data (a synthetic set, method or dataset spec)")
        summary = distill_student_(student, model, kd, data, progress=progress, **run)
    finish_pruning_(student, config, cut)
    after = count_flops_params(student)
    record_of(student).reports["prune"] = {
        "steps": summary.get("steps", 0), "cut": cut, "flops_before": before["flops"], "flops_after": after["flops"],
        "params_before": before["params"], "params_after": after["params"],
        "nonzero_params_after": after["nonzero_params"], "curve": summary.get("curve") or [],
        **({"final_kd_loss": summary["final_loss"], "val_top1": summary["val_top1"]} if summary else {})}
    return student


def _rebuild(model: nn.Module, t: dict, state_dict: dict) -> nn.Module:
    """Shrink the fresh model's layers to the pruned channel counts the state dict holds."""
    if t["config"].get("structured"):
        model = copy.deepcopy(model)
        resize_to_state_dict_(model, {k: v for k, v in state_dict.items() if k != PRUNED_MARKER})
    return model


def _check(s: Schema, model: nn.Module, t: dict, field: str) -> None:
    """A stored prune record: the kept channel counts (positive integers) when structured."""
    s.items(t, "channels", int, field, required=False, lo=1)


register_compressor("prune", PruneConfig, _apply, _rebuild,
                    "remove channels (structured, FLOPs drop) or weights (unstructured), then KD fine-tuning", _check)


def _check_sparsity(s: float) -> None:
    check(0.0 <= s < 1.0, f"sparsity must be in [0, 1), got {s}", "sparsity")
