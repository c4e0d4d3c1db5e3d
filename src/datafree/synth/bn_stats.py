"""BN-Statistics scheme (and its class-conditional variant): match every BN layer's stored statistics."""
from __future__ import annotations

import dataclasses
from typing import Optional, cast

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..core.config import check, opt
from ..models.bn_hooks import BNStatHooks, bn_loss
from .base import PixelConfig, StepCallback, Synthesizer, register_synthesizer
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
        cfg = cast(BNStatsConfig, self.cfg)
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


@dataclasses.dataclass
class MixMixConfig(BNStatsConfig):
    """MixMix (Li et al. 2021): BN matching over a pool of teachers at once (feature mixing) plus CutMix pasting
    between the samples being optimized, with area-weighted soft labels (data mixing)."""

    form: str = "l2"
    ce: float = opt(0.1, "weight of the (soft-label) cross-entropy on the teachers' averaged logits", cli=True)
    cutmix: float = opt(0.5, "probability that a pixel-optimization step pastes a box from another sample (data "
                             "mixing; 0 = feature mixing only)", cli=True)
    cutmix_alpha: float = opt(1.0, "Beta(a, a) of the pasted area")

    def validate(self) -> None:
        super().validate()
        check(0 <= self.cutmix <= 1, f"cutmix must be in [0, 1], got {self.cutmix}", "cutmix")
        check(self.cutmix_alpha > 0, f"cutmix_alpha must be > 0, got {self.cutmix_alpha}", "cutmix_alpha")


def cutmix(x: torch.Tensor, y: torch.Tensor, num_classes: int, gen: torch.Generator,
           alpha: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Paste a random box of a shuffled batch into x; soft labels weighted by area: (mixed x, soft y, kept fraction)."""
    n, _, h, w = x.shape
    lam = float(torch.distributions.Beta(alpha, alpha).sample()) if alpha else 0.5
    # the draw above uses torch's global generator; the box and the pairing use `gen` (reproducible per shard)
    cut = (1 - lam) ** 0.5
    bh, bw = int(round(h * cut)), int(round(w * cut))
    cy, cx = int(torch.randint(0, h, (1,), generator=gen)), int(torch.randint(0, w, (1,), generator=gen))
    y0, y1 = max(cy - bh // 2, 0), min(cy + bh - bh // 2, h)
    x0, x1 = max(cx - bw // 2, 0), min(cx + bw - bw // 2, w)
    perm = torch.randperm(n, generator=gen).to(x.device)
    mixed = x.clone()
    mixed[:, :, y0:y1, x0:x1] = x[perm][:, :, y0:y1, x0:x1]
    keep = 1.0 - (y1 - y0) * (x1 - x0) / float(h * w)
    one = F.one_hot(y, num_classes).float()
    return mixed, keep * one + (1 - keep) * one[perm], keep


@register_synthesizer("mixmix")
class MixMixSynthesizer(BNStatsSynthesizer):
    """MixMix: BN statistics of every teacher in a pool (give an Ensemble: `--teachers`) plus CutMix data mixing with
    area-weighted soft labels; the samples serve any one target model."""

    config_cls = MixMixConfig
    class_conditional = True

    def mix_inputs(self, x: torch.Tensor, y: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = cast(MixMixConfig, self.cfg)
        if cfg.cutmix <= 0 or len(x) < 2 or float(torch.rand(1, generator=gen)) >= cfg.cutmix:
            return x, y
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(torch.randint(0, 2 ** 31 - 1, (1,), generator=gen)))
            mixed, soft, _ = cutmix(x, y, self.spec.num_classes, gen, cfg.cutmix_alpha)
        return mixed, soft
