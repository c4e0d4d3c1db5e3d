"""Gaussian scheme: N(0, I) samples in the normalized input space, labelled by the teacher."""
from __future__ import annotations

import dataclasses

import torch

from .base import StepCallback, SynthConfig, Synthesizer, register_synthesizer


@dataclasses.dataclass
class GaussianConfig(SynthConfig):
    """Gaussian samples need no options beyond count, batch size and seed."""


@register_synthesizer("gaussian")
class GaussianSynthesizer(Synthesizer):
    """x ~ N(0, I) in normalized space (unclamped, as the scheme specifies)."""

    config_cls = GaussianConfig
    class_conditional = False

    def make_batch(self, y: torch.Tensor, gen: torch.Generator, step: StepCallback) -> torch.Tensor:
        x = torch.randn((len(y), *self.spec.shape), generator=gen).to(self.device)
        step(1)
        return x
