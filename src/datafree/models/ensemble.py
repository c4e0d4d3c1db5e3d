"""A pool of teachers seen as one model (MixMix's feature mixing): averaged logits, every member's BN layers."""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn as nn

from ..core.errors import DatafreeError
from .record import record_of


class Ensemble(nn.Module):
    """Members with one input spec; forward = the (weighted) mean of their logits. BN hooks, fingerprints and
    manifests see all members' layers and weights, since they are submodules."""

    def __init__(self, members: Sequence[nn.Module], weights: Optional[Sequence[float]] = None) -> None:
        super().__init__()
        if len(members) < 1:
            raise DatafreeError("an ensemble needs at least one model")
        specs = [record_of(m).input_spec for m in members]
        if any(s is None for s in specs):
            raise DatafreeError("every ensemble member needs an input spec (zoo models and loaded models have one)")
        s0 = specs[0]
        for s, _m in zip(specs[1:], members[1:]):
            if tuple(s.shape) != tuple(s0.shape) or s.num_classes != s0.num_classes:
                raise DatafreeError(f"ensemble members must share input shape and classes: {tuple(s0.shape)}/"
                                    f"{s0.num_classes} vs {tuple(s.shape)}/{s.num_classes}")
            if tuple(s.mean) != tuple(s0.mean) or tuple(s.std) != tuple(s0.std):
                raise DatafreeError("ensemble members must share the input normalization (mean/std)")
        self.members = nn.ModuleList(members)
        w = torch.tensor(list(weights) if weights is not None else [1.0] * len(members), dtype=torch.float32)
        if len(w) != len(members) or (w <= 0).any():
            raise DatafreeError("ensemble weights must be positive, one per member")
        self.register_buffer("weights", w / w.sum())
        rec = record_of(self)
        rec.input_spec = s0
        rec.source = {"model": "ensemble", "members": [record_of(m).source or None for m in members]}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.weights[0] * self.members[0](x)
        for w, m in zip(self.weights[1:], self.members[1:]):
            out = out + w * m(x)
        return out


def parse_teacher_ref(ref: str) -> tuple[str, Optional[str]]:
    """'resnet20:W.th' -> ('resnet20', 'W.th'); 'file.py:factory:W.pt' -> ('file.py:factory', 'W.pt'); a bare name
    has no weights."""
    if ".py:" in ref:
        model, _, rest = ref.partition(".py:")
        factory, sep, weights = rest.partition(":")
        return model + ".py:" + factory, (weights if sep else None)
    name, sep, weights = ref.partition(":")
    return name, (weights if sep else None)
