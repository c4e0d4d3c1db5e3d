"""Inception scheme: maximize a chosen class (cross-entropy) under an image prior."""
from __future__ import annotations

import dataclasses
from typing import cast

import torch
import torch.nn.functional as F

from ..core.config import check
from .base import PixelConfig, StepCallback, Synthesizer, register_synthesizer
from .priors import total_variation


@dataclasses.dataclass
class InceptionConfig(PixelConfig):
    """Class-conditional logit maximization; `tv` and `l2` form the image prior."""

    objective: str = "logit"  # "logit": maximize the target logit; "ce": minimize cross-entropy (saturates early)
    lr: float = 0.05
    tv: float = 0.5
    l2: float = 1e-3
    init_std: float = 0.2

    def validate(self) -> None:
        super().validate()
        check(self.objective in ("logit", "ce"), f"objective must be 'logit' or 'ce', got {self.objective!r}")


@register_synthesizer("inception")
class InceptionSynthesizer(Synthesizer):
    """DeepDream-style: maximize the target logit (or minimize CE) + tv·TV(x) + l2·mean(x²), balanced labels."""

    config_cls = InceptionConfig
    iterative = True

    def loss(self, x: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        cfg = cast(InceptionConfig, self.cfg)
        ce = F.cross_entropy(logits, y)
        target = -logits.gather(1, y[:, None]).mean() if cfg.objective == "logit" else ce
        loss = target + cfg.tv * total_variation(x) + cfg.l2 * x.pow(2).mean()
        return loss, {"loss": loss.item(), "ce": ce.item()}

    def make_batch(self, y: torch.Tensor, gen: torch.Generator, step: StepCallback) -> torch.Tensor:
        return self.optimize_pixels(y, gen, step)
