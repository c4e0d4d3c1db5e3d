"""BN-Statistics scheme (and its class-conditional variant): match every BN layer's stored statistics."""
from __future__ import annotations

import dataclasses
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import check, opt
from .base import PixelConfig, StepCallback, Synthesizer, register_synthesizer
from .bn_hooks import BNStatHooks, bn_loss
from .priors import total_variation


@dataclasses.dataclass
class BNStatsConfig(PixelConfig):
    """BN matching; `form` is `kl` (KL of Gaussians, channel-averaged per layer) or `l2` (DeepInversion norms)."""

    form: str = opt("kl", "BN matching form: kl (KL of Gaussians) or l2 (the DeepInversion norms)", flag="--bn-loss",
                    cli=True, choices=("kl", "l2"))
    first_layer_weight: float = 1.0
    ce: float = 0.0  # weight of CE(teacher(x), y); > 0 makes it class-conditional

    def validate(self) -> None:
        super().validate()
        check(self.form in ("kl", "l2"), f"form must be 'kl' or 'l2', got {self.form!r}", "form")
        check(self.ce >= 0, f"ce weight must be >= 0, got {self.ce}")


@dataclasses.dataclass
class BNStatsInceptionConfig(BNStatsConfig):
    """BN matching plus λ·CE towards balanced labels."""

    ce: float = 0.1


class BNMatchingSynthesizer(Synthesizer):
    """Base of pixel-optimizing methods with a BN-statistics term: hooks on the teacher's BN layers, removed on close."""

    needs_bn = True
    iterative = True

    def __init__(self, teacher: nn.Module, config: PixelConfig, student: Optional[nn.Module] = None) -> None:
        super().__init__(teacher, config, student)
        self.hooks = BNStatHooks(self.teacher)

    def make_batch(self, y: torch.Tensor, gen: torch.Generator, step: StepCallback) -> torch.Tensor:
        return self.optimize_pixels(y, gen, step)

    def close(self) -> None:
        self.hooks.remove()


@register_synthesizer("bn-stats")
class BNStatsSynthesizer(BNMatchingSynthesizer):
    """Minimize Σ_l mean_c KL(N(μ̂, σ̂²) || N(μ(x), σ²(x))) over the inputs of all BN layers."""

    config_cls = BNStatsConfig
    class_conditional = False

    def loss(self, x: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        cfg: BNStatsConfig = self.cfg  # type: ignore[assignment]
        bn, _ = bn_loss(self.hooks, cfg.form, cfg.first_layer_weight)
        loss = bn
        parts = {"bn": bn.item()}
        if cfg.ce > 0:
            ce = F.cross_entropy(logits, y)
            loss = loss + cfg.ce * ce
            parts["ce"] = ce.item()
        if cfg.tv > 0:
            loss = loss + cfg.tv * total_variation(x)
        if cfg.l2 > 0:
            loss = loss + cfg.l2 * x.pow(2).mean()
        return loss, parts


@register_synthesizer("bn-stats+inception")
class BNStatsInceptionSynthesizer(BNStatsSynthesizer):
    """BN-statistics matching plus cross-entropy towards class-balanced labels."""

    config_cls = BNStatsInceptionConfig
    class_conditional = True
