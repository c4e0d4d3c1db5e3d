"""Image priors and augmentations used while optimizing pixels."""
from __future__ import annotations

import torch


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of neighbouring pixels (horizontal, vertical and both diagonals)."""
    d1 = x[:, :, :, :-1] - x[:, :, :, 1:]
    d2 = x[:, :, :-1, :] - x[:, :, 1:, :]
    d3 = x[:, :, 1:, :-1] - x[:, :, :-1, 1:]
    d4 = x[:, :, :-1, :-1] - x[:, :, 1:, 1:]
    return d1.pow(2).mean() + d2.pow(2).mean() + d3.pow(2).mean() + d4.pow(2).mean()


def jitter_flip(x: torch.Tensor, jitter: int, flip: bool, gen: torch.Generator) -> torch.Tensor:
    """Random circular shift by up to ±jitter pixels and a random horizontal flip of the whole batch."""
    if jitter > 0:
        dx, dy = (int(v) for v in torch.randint(-jitter, jitter + 1, (2,), generator=gen))
        x = torch.roll(x, shifts=(dx, dy), dims=(2, 3))
    if flip and bool(torch.rand((), generator=gen) < 0.5):
        x = torch.flip(x, dims=(3,))
    return x


def tv_l2_norm(x: torch.Tensor) -> torch.Tensor:
    """DeepInversion's TV prior: sum of the (plain, not squared) L2 norms of the four neighbour differences."""
    d1 = x[:, :, :, :-1] - x[:, :, :, 1:]
    d2 = x[:, :, :-1, :] - x[:, :, 1:, :]
    d3 = x[:, :, 1:, :-1] - x[:, :, :-1, 1:]
    d4 = x[:, :, :-1, :-1] - x[:, :, 1:, 1:]
    norm = torch.linalg.vector_norm
    return norm(d1) + norm(d2) + norm(d3) + norm(d4)
