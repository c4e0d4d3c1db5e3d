"""Hooks on every BatchNorm module's input, and the BN-statistics matching losses."""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn

from ..core.errors import DatafreeError
from ..core.utils import batch_moments

_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def bn_layers(model: nn.Module) -> list[tuple[str, nn.modules.batchnorm._BatchNorm]]:
    """(name, module) of every BatchNorm layer that tracks running statistics."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, _BN) and m.track_running_stats
            and m.running_mean is not None]


def require_bn(model: nn.Module, method: str) -> None:
    """Raise a one-line error when a BN-statistics method is asked of a model without BatchNorm."""
    if not bn_layers(model):
        raise DatafreeError(f"method {method!r} needs BatchNorm layers with running statistics and this model has none; "
                            "use --method gaussian or --method inception instead")


class BNStatHooks:
    """Collects, per BN layer, the mean and biased variance of its input on each forward pass."""

    def __init__(self, model: nn.Module, instance_means: bool = False) -> None:
        self.layers = bn_layers(model)
        self.means: list[torch.Tensor | None] = [None] * len(self.layers)
        self.vars: list[torch.Tensor | None] = [None] * len(self.layers)
        self.instance_means = instance_means  # also keep each sample's channel means (CMI's contrastive features)
        self.inst: list[torch.Tensor | None] = [None] * len(self.layers)
        self._handles = [m.register_forward_hook(self._hook(i)) for i, (_, m) in enumerate(self.layers)]

    def _hook(self, i: int) -> Callable:
        def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            self.means[i], self.vars[i] = batch_moments(inputs[0])
            if self.instance_means:
                x = inputs[0].float()
                self.inst[i] = x.mean(dim=list(range(2, x.dim()))) if x.dim() > 2 else x

        return hook

    def features(self) -> torch.Tensor:
        """Per-sample channel means of every hooked BN input, concatenated (needs instance_means=True)."""
        return torch.cat([f for f in self.inst if f is not None], 1)

    def running(self) -> list[tuple[torch.Tensor, torch.Tensor, float]]:
        """Stored (running_mean, running_var, eps) per layer."""
        return [(m.running_mean, m.running_var, m.eps) for _, m in self.layers]  # type: ignore[misc]

    def remove(self) -> None:
        """Detach the hooks."""
        for h in self._handles:
            h.remove()
        self._handles = []

    def __enter__(self) -> "BNStatHooks":
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def gaussian_kl(mu_hat: torch.Tensor, var_hat: torch.Tensor, mu: torch.Tensor, var: torch.Tensor, eps: float) -> torch.Tensor:
    """Per-channel KL(N(mu_hat, var_hat) || N(mu, var)), eps added to both variances."""
    v_hat = var_hat + eps
    v = var + eps
    return 0.5 * torch.log(v / v_hat) - 0.5 + (v_hat + (mu_hat - mu) ** 2) / (2 * v)


def bn_loss(hooks: BNStatHooks, form: str = "kl", first_layer_weight: float = 1.0) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Sum over layers of the BN-matching loss; `kl` is channel-averaged KL, `l2` the DeepInversion norms."""
    per_layer = []
    for i, (rm, rv, eps) in enumerate(hooks.running()):
        mu, var = hooks.means[i], hooks.vars[i]
        if mu is None or var is None:
            continue  # layer not reached in this forward
        if form == "kl":
            term = gaussian_kl(rm, rv, mu, var, eps).mean()
        elif form == "l2":
            term = torch.linalg.vector_norm(mu - rm) + torch.linalg.vector_norm(var - rv)
        else:
            raise ValueError(f"unknown BN loss form {form!r}; use 'kl' or 'l2'")
        per_layer.append(term * (first_layer_weight if i == 0 else 1.0))
    if not per_layer:
        raise DatafreeError("no BatchNorm layer was reached in the forward pass; check the model's forward")
    return torch.stack(per_layer).sum(), per_layer
