"""Inception scheme: maximize a chosen class (cross-entropy) under an image prior."""
from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from .base import PixelConfig, StepCallback, Synthesizer, register_synthesizer
from .priors import total_variation


@dataclasses.dataclass
class InceptionConfig(PixelConfig):
    """Class-conditional logit maximization; `tv` and `l2` form the image prior."""

    lr: float = 0.1
    tv: float = 0.05
    l2: float = 1e-3


@register_synthesizer("inception")
class InceptionSynthesizer(Synthesizer):
    """DeepDream-style: CE(teacher(x), y) + tv·TV(x) + l2·mean(x²) with balanced labels."""

    config_cls = InceptionConfig
    iterative = True

    def loss(self, x: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        cfg: InceptionConfig = self.cfg  # type: ignore[assignment]
        ce = F.cross_entropy(logits, y)
        loss = ce + cfg.tv * total_variation(x) + cfg.l2 * x.pow(2).mean()
        return loss, {"loss": loss.item(), "ce": ce.item()}

    def make_batch(self, y: torch.Tensor, gen: torch.Generator, step: StepCallback) -> torch.Tensor:
        return self.optimize_pixels(y, gen, step)
