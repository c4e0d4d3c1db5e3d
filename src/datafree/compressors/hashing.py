"""Structured Multi-Hashing (Eban et al., CVPR 2020): every conv/linear weight and bias of a model is read from one
virtual n×n matrix X·Y (2·M·n trainable variables) times a learnable per-tensor scale; trained by the KD loop."""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Optional

import torch
import torch.nn as nn

from ..core.config import Config, opt
from ..core.errors import DatafreeError
from ..core.schema import Schema, submodule
from ..data.source import SourceLike
from ..kd.loop import KDConfig
from ..models.record import record_of
from .base import record_transform, register_compressor

_HASHABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


@dataclasses.dataclass
class HashConfig(Config):
    """Structured Multi-Hashing budget and initialization."""

    fraction: float = opt(0.25, "size budget as a fraction of the model's trainable variables (all of them, BN "
                                "included)", cli=True, lo=0, lo_open=True, hi=1)
    variables: int = opt(0, "size budget in trainable variables (overrides --fraction)", cli=True, lo=0)
    skip_first_last: bool = opt(False, "keep the first and the last conv/linear layer unhashed, with their own weights",
                                cli=True)
    init: str = opt("paper", "paper: X, Y ~ N(0, M^-1/2) so X·Y has unit scale, per-tensor scales at the layers' fan-in "
                             "init, fresh BN (the paper; trained from scratch). svd: X·Y the best rank-M fit of the "
                             "teacher's weights (each tensor divided by its scale), teacher BN; on ResNet-32 it starts at chance (the "
                             "concatenated weights are not low-rank; BENCHMARKS.md), so paper is the default", cli=True,
                    choices=("paper", "svd"))
    seed: int = opt(0, "seed of the initialization")


def hashable_tensors(model: nn.Module, skip_first_last: bool = False) -> list[tuple[str, str]]:
    """(module name, 'weight' | 'bias') of every conv/linear tensor, in creation order (BN excluded)."""
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, _HASHABLE)]
    if skip_first_last and len(layers) > 2:
        layers = layers[1:-1]
    out = []
    for n, m in layers:
        for p in ("weight", "bias"):
            if isinstance(m._parameters.get(p), nn.Parameter):
                out.append((n, p))
    return out


def _materialize_hook(model: nn.Module, args: Any) -> None:
    """Forward pre-hook: each hashed tensor = its slice of X·Y (row-major) times its scale."""
    v = (model.smh_X @ model.smh_Y).reshape(-1)
    for i, (name, p, off, shape) in enumerate(record_of(model).hash_entries):
        n = math.prod(shape)
        setattr(model.get_submodule(name), p, v[off:off + n].view(shape) * model.smh_scales[i])


def _detach_hook(model: nn.Module, args: Any, out: Any) -> None:
    """Forward hook: leave detached copies behind (deepcopy and inspection work; autograd kept its own references)."""
    for name, p, _, _ in record_of(model).hash_entries:
        m = model.get_submodule(name)
        setattr(m, p, getattr(m, p).detach())


def _refresh_after_load(model: nn.Module, incompatible: Any) -> None:
    """After load_state_dict: the materialized tensors follow the loaded X, Y and scales."""
    with torch.no_grad():
        _materialize_hook(model, ())
        _detach_hook(model, (), None)


def is_hashed(model: nn.Module) -> bool:
    """Whether `model` carries Structured Multi-Hashing variables."""
    return bool(record_of(model).hash_entries)


def _budget_m(model: nn.Module, entries: list[tuple[str, str]], cfg: HashConfig) -> tuple[int, int, int]:
    """(n, M, target variables) for the budget: the hashed part gets what the unhashed variables and scales leave."""
    total = sum(p.numel() for p in model.parameters())
    hashed = sum(getattr(model.get_submodule(n), p).numel() for n, p in entries)
    target = cfg.variables or int(round(cfg.fraction * total))
    n = math.ceil(math.sqrt(hashed))
    left = target - (total - hashed) - len(entries)
    if left < 2 * n:
        raise DatafreeError(f"a budget of {target} variables leaves {left} for the hashed matrices after "
                            f"{total - hashed} unhashed variables and {len(entries)} scales; X and Y need at least "
                            f"{2 * n} (M = 1): raise --fraction/--variables")
    return n, max(1, left // (2 * n)), target


def hash_model_(model: nn.Module, entries: list[tuple[str, str]], n: int, m: int) -> nn.Module:
    """Replace the listed tensors by slices of an n×n product X·Y of rank M (variables uninitialized); in place."""
    if is_hashed(model):
        raise DatafreeError("the model is already hashed")
    table, off = [], 0
    dev = next(model.parameters()).device
    for name, p in entries:
        mod = model.get_submodule(name)
        shape = tuple(getattr(mod, p).shape)
        table.append((name, p, off, shape))
        off += math.prod(shape)
        t = mod._parameters.pop(p).detach()
        setattr(mod, p, t)  # a plain tensor until the first forward recomputes it
    if off > n * n:
        raise DatafreeError(f"{off} hashed values do not fit an {n}x{n} matrix")
    model.register_parameter("smh_X", nn.Parameter(torch.zeros(n, m, device=dev)))
    model.register_parameter("smh_Y", nn.Parameter(torch.zeros(m, n, device=dev)))
    model.register_parameter("smh_scales", nn.Parameter(torch.ones(len(table), device=dev)))
    record_of(model).hash_entries = table
    model.register_forward_pre_hook(_materialize_hook)
    model.register_forward_hook(_detach_hook)
    model.register_load_state_dict_post_hook(_refresh_after_load)
    return model


def _fan_in(mod: nn.Module) -> int:
    w = mod.weight
    return int(w[0].numel()) if w.dim() > 1 else int(w.numel())


@torch.no_grad()
def init_hashed_(model: nn.Module, cfg: HashConfig, teacher_values: Optional[dict[tuple[str, str], torch.Tensor]] = None) -> None:
    """The paper's initialization (or `svd`: rank-M fit of the teacher's tensors divided by their scales)."""
    n, m = model.smh_X.shape
    g = torch.Generator().manual_seed(cfg.seed)
    scales = []
    for name, p, _, _ in record_of(model).hash_entries:
        fan = _fan_in(model.get_submodule(name))
        scales.append(math.sqrt(2.0 / fan) if p == "weight" else 1.0 / math.sqrt(3.0 * fan))
    model.smh_scales.copy_(torch.tensor(scales))
    if cfg.init == "svd" and teacher_values is not None:
        v = torch.zeros(n * n)
        for i, (name, p, off, _shape) in enumerate(record_of(model).hash_entries):
            t = teacher_values[(name, p)].detach().float().cpu().reshape(-1)
            s = float(t.std()) if t.numel() > 1 and float(t.std()) > 0 else max(float(t.abs().max()), 1e-8)
            model.smh_scales[i] = s
            v[off:off + t.numel()] = t / s
        u, sv, vh = torch.linalg.svd(v.view(n, n), full_matrices=False)
        r = torch.sqrt(sv[:m])
        model.smh_X.copy_((u[:, :m] * r).to(model.smh_X.device))
        model.smh_Y.copy_((r[:, None] * vh[:m]).to(model.smh_Y.device))
        return
    std = m ** -0.25  # entries of X·Y: sum of M products of two N(0, M^-1/2) variables -> unit variance
    model.smh_X.copy_(torch.randn(n, m, generator=g) * std)
    model.smh_Y.copy_(torch.randn(m, n, generator=g) * std)


def hash_variables(model: nn.Module) -> int:
    """Trainable variables of a (hashed) model."""
    return sum(p.numel() for p in model.parameters())


def make_hashed(teacher: nn.Module, cfg: HashConfig) -> nn.Module:
    """A hashed copy of `teacher`'s architecture at the budget, initialized (paper: fresh BN; svd: teacher BN)."""
    import copy

    student = copy.deepcopy(teacher)
    entries = hashable_tensors(student, cfg.skip_first_last)
    if not entries:
        raise DatafreeError("the model has no conv or linear layer to hash")
    values = {(n, p): getattr(student.get_submodule(n), p).detach().clone() for n, p in entries}
    n, m, target = _budget_m(student, entries, cfg)
    if cfg.init == "paper":
        torch.manual_seed(cfg.seed)
        for mod in student.modules():
            if isinstance(mod, _HASHABLE):
                mod.reset_parameters()  # unhashed layers too: trained from scratch
            elif isinstance(mod, nn.modules.batchnorm._BatchNorm):
                mod.reset_parameters()
    hash_model_(student, entries, n, m)
    init_hashed_(student, cfg, values)
    record_of(student).reports["hash"] = {"n": n, "M": m, "target_variables": target,
                                          "variables": hash_variables(student), "teacher_variables": hash_variables(teacher)}
    with torch.no_grad():  # weights materialized once, so inspection before the first forward sees them
        _materialize_hook(student, ())
        _detach_hook(student, (), None)
    return student


def materialize(model: nn.Module) -> nn.Module:
    """A plain copy of a hashed model: every hashed tensor an ordinary parameter with its current value."""
    import copy

    if not is_hashed(model):
        return model
    plain = copy.deepcopy(model)
    with torch.no_grad():
        _materialize_hook(plain, ())
    for name, p, _, _ in record_of(plain).hash_entries:
        mod = plain.get_submodule(name)
        t = getattr(mod, p).detach().clone()
        delattr(mod, p)
        mod.register_parameter(p, nn.Parameter(t))
    for k in ("smh_X", "smh_Y", "smh_scales"):
        delattr(plain, k)
    rec = record_of(plain)
    rec.hash_entries = []
    plain._forward_pre_hooks.clear()
    plain._forward_hooks.clear()
    plain._load_state_dict_post_hooks.clear()
    rec.transforms = [t for t in rec.transforms if t.get("compressor") != "hash"]
    return plain


def hash_distill(teacher: nn.Module, data: SourceLike, cfg: HashConfig, kd: KDConfig, **kw: Any) -> nn.Module:
    """A hashed student of the teacher's architecture at the budget, trained by the KD loop on any data source."""
    from ..kd.run import distill_student_

    student = make_hashed(teacher, cfg)
    summary = distill_student_(student, teacher, kd, data, **kw)
    rec = record_of(student)
    info = rec.reports["hash"]
    info["distill"] = {k: summary[k] for k in ("steps", "seconds", "val_top1")}
    info["seconds"], info["curve"] = summary["seconds"], summary.get("curve") or []
    return record_transform(student, "hash", cfg, n=info["n"], M=info["M"],
                            entries=[[n, p] for n, p, _, _ in rec.hash_entries], kd=kd.to_dict())


def _apply(model: nn.Module, data: Optional[SourceLike], config: HashConfig, kd: Optional[KDConfig] = None,
           **kw: Any) -> nn.Module:
    if data is None:
        raise DatafreeError("hash needs training data for the KD loop (a synthetic set, method or dataset spec)")
    return hash_distill(model, data, config, kd or KDConfig(), **kw)


def _rebuild(model: nn.Module, t: dict, state_dict: dict) -> nn.Module:
    """The hashed structure (values come from the state dict)."""
    import copy

    model = copy.deepcopy(model)
    hash_model_(model, [(n, p) for n, p in t["entries"]], int(t["n"]), int(t["M"]))
    return model


def _check(s: Schema, model: nn.Module, t: dict, field: str) -> None:
    """A stored hash record: (layer, tensor) entries the model has, positive matrix sizes."""
    for k in ("n", "M"):
        s.number(t, k, field, lo=1)
    for i, e in enumerate(s.get(t, "entries", list, field)):
        f = f"{field}.entries[{i}]"
        if not (isinstance(e, (list, tuple)) and len(e) == 2 and all(isinstance(v, str) for v in e)):
            s.fail(f, "must be a [layer, tensor] pair of names")
        mod = submodule(s, model, e[0], f)
        if not isinstance(getattr(mod, e[1], None), torch.Tensor):
            s.fail(f, f"names tensor {e[1]!r} of {e[0]!r}, which that layer does not have")


register_compressor("hash", HashConfig, _apply, _rebuild,
                    "Structured Multi-Hashing: all conv/linear tensors read from one low-rank virtual matrix X·Y, "
                    "trained by KD", _check, plain=materialize)
