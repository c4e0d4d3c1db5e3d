"""Batch augmentations shared by the KD loop and generator synthesis (per-sample, seeded, device-agnostic)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def mix_batch(x: torch.Tensor, gen: torch.Generator, alpha: float) -> torch.Tensor:
    """Convex combination of each input with a random partner, weight ~ Beta(alpha, alpha) per sample (KD only: no labels)."""
    n = x.shape[0]
    conc = torch.full((n,), float(alpha))
    a, b = torch._standard_gamma(conc, generator=gen), torch._standard_gamma(conc, generator=gen)  # Beta via two Gammas, seeded
    lam = (a / (a + b)).to(x.device).view(n, *([1] * (x.dim() - 1)))
    perm = torch.randperm(n, generator=gen).to(x.device)
    return lam * x + (1 - lam) * x[perm]


def augment_batch(x: torch.Tensor, gen: torch.Generator, flip: bool = True) -> torch.Tensor:
    """Random crop after zero padding (1/8 of the side, 4 px at 32) and random per-sample horizontal flip."""
    n, _, h, w = x.shape
    pad = max(1, h // 8)
    xp = F.pad(x, (pad, pad, pad, pad))
    i = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    j = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    rows = (i[:, None] + torch.arange(h)[None]).to(x.device)  # (n, h)
    cols = (j[:, None] + torch.arange(w)[None]).to(x.device)  # (n, w)
    out = xp[torch.arange(n, device=x.device)[:, None, None, None], torch.arange(x.shape[1], device=x.device)[None, :, None, None],
             rows[:, None, :, None], cols[:, None, None, :]]
    if flip:
        f = (torch.rand(n, generator=gen) < 0.5).to(x.device)
        out = torch.where(f[:, None, None, None], out.flip(3), out)
    return out


def resized_crop(x: torch.Tensor, gen: torch.Generator, scale: tuple[float, float] = (0.25, 1.0),
                 flip: bool = True) -> torch.Tensor:
    """Random resized crop per sample (area fraction in `scale`, aspect 3/4..4/3) back to the input size, bilinear,
    with a random horizontal flip; differentiable in x."""
    n = x.shape[0]
    area = torch.empty(n).uniform_(scale[0], scale[1], generator=gen)
    logr = torch.empty(n).uniform_(-0.2877, 0.2877, generator=gen)  # log(3/4)..log(4/3)
    ratio = logr.exp()
    sw = (area * ratio).sqrt().clamp(max=1.0)  # crop width / image width
    sh = (area / ratio).sqrt().clamp(max=1.0)
    cx = (torch.rand(n, generator=gen) * 2 - 1) * (1 - sw)  # crop centre in [-1, 1] coordinates, inside the image
    cy = (torch.rand(n, generator=gen) * 2 - 1) * (1 - sh)
    sx = sw * torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0) if flip else sw
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = sx, cx, sh, cy
    grid = F.affine_grid(theta.to(x.device, x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
