"""Uniform fake quantization with a straight-through estimator, MSE-optimal weight clipping and range observers."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn


def round_ste(t: torch.Tensor) -> torch.Tensor:
    """Round with an identity gradient."""
    return t + (torch.round(t) - t).detach()


class WeightRounding(nn.Module):
    """The swappable rounding of a quantized layer's weights: maps w/s to integers (before clamping to the grid).
    The default rounds to nearest with a straight-through gradient; learned roundings (AdaRound) subclass it."""

    def forward(self, w_over_s: torch.Tensor) -> torch.Tensor:
        return round_ste(w_over_s)


def signed_range(bits: int) -> tuple[int, int]:
    """Integer grid of a signed `bits`-bit weight: [-2^(b-1), 2^(b-1) - 1]."""
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


def unsigned_range(bits: int) -> tuple[int, int]:
    """Integer grid of an unsigned `bits`-bit activation: [0, 2^b - 1]."""
    return 0, 2 ** bits - 1


def fake_quant(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, qmin: int, qmax: int) -> torch.Tensor:
    """(clamp(round(x / s) + z, qmin, qmax) - z) * s, with straight-through rounding."""
    q = torch.clamp(round_ste(x / scale) + zero_point, qmin, qmax)
    return (q - zero_point) * scale


def drop_quant(x: torch.Tensor, xq: torch.Tensor, drop: Optional[tuple[float, torch.Generator]]) -> torch.Tensor:
    """QDrop: with `drop` = (p, generator) each element is left at its float value x with probability p, else xq."""
    if drop is None or drop[0] <= 0:
        return xq
    keep_float = torch.rand(x.shape, generator=drop[1]).to(x.device) < drop[0]
    return torch.where(keep_float, x, xq)


def quantize_int(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, qmin: int, qmax: int) -> torch.Tensor:
    """The integer codes of x (no gradient)."""
    return torch.clamp(torch.round(x / scale) + zero_point, qmin, qmax)


def weight_scales(w: torch.Tensor, bits: int, method: str = "mse", grid: int = 100) -> torch.Tensor:
    """Per-output-channel symmetric scale; `mse` searches the clipping that minimizes squared error."""
    qmin, qmax = signed_range(bits)
    flat = w.detach().reshape(w.shape[0], -1)
    amax = flat.abs().amax(1).clamp_min(1e-12)
    if method == "minmax":
        return amax / qmax
    if method != "mse":
        raise ValueError(f"unknown weight scale method {method!r}")
    fracs = torch.linspace(0.05, 1.0, grid, device=w.device, dtype=flat.dtype)
    best_err = torch.full_like(amax, float("inf"))
    best = amax / qmax
    for f in fracs:
        s = amax * f / qmax
        q = torch.clamp(torch.round(flat / s[:, None]), qmin, qmax) * s[:, None]
        err = (q - flat).pow(2).sum(1)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best = torch.where(better, s, best)
    return best


def act_qparams(lo: float, hi: float, bits: int) -> tuple[float, float]:
    """Asymmetric (scale, zero_point) for range [lo, hi] (widened to include 0)."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    qmin, qmax = unsigned_range(bits)
    scale = max((hi - lo) / (qmax - qmin), 1e-8)
    zero = float(min(max(round(qmin - lo / scale), qmin), qmax))
    return scale, zero


class RangeObserver:
    """Collects activation statistics over batches and proposes a range (minmax, percentile or mse)."""

    def __init__(self, method: str = "mse", percentile: float = 99.99, max_samples: int = 2_000_000) -> None:
        if method not in ("minmax", "percentile", "mse"):
            raise ValueError(f"unknown range method {method!r}; use minmax, percentile or mse")
        self.method = method
        self.percentile = percentile
        self.max_samples = max_samples
        self.lo = float("inf")
        self.hi = float("-inf")
        self.samples: list[torch.Tensor] = []
        self.n = 0
        self._gen = torch.Generator().manual_seed(0)

    def update(self, x: torch.Tensor) -> None:
        """Add one batch of activations."""
        x = x.detach().float().flatten()
        self.lo = min(self.lo, x.min().item())
        self.hi = max(self.hi, x.max().item())
        if self.method != "minmax":
            keep = min(x.numel(), 200_000)
            if keep < x.numel():
                idx = torch.randint(0, x.numel(), (keep,), generator=self._gen).to(x.device)
                x = x[idx]
            self.samples.append(x.cpu())
            self.n += x.numel()
            if self.n > self.max_samples:  # thin out to bound memory
                allx = torch.cat(self.samples)
                self.samples = [allx[torch.randperm(allx.numel(), generator=self._gen)[: self.max_samples // 2]]]
                self.n = self.samples[0].numel()

    def range(self, bits: int) -> tuple[float, float]:
        """The calibrated (lo, hi)."""
        if self.lo == float("inf"):
            raise RuntimeError("observer saw no data")
        if self.method == "minmax":
            return self.lo, self.hi
        x = torch.cat(self.samples)
        if self.method == "percentile":
            p = self.percentile / 100.0
            k = min(x.numel(), 1_000_000)
            xs = x[:k]
            lo = torch.quantile(xs, 1 - p).item() if self.lo < 0 else 0.0
            return min(lo, 0.0), torch.quantile(xs, p).item()
        return mse_range(x, self.lo, self.hi, bits)


def mse_range(x: torch.Tensor, lo: float, hi: float, bits: int, grid: int = 100) -> tuple[float, float]:
    """The shrunk range [f·lo, f·hi] with the least quantization MSE on samples x."""
    qmin, qmax = unsigned_range(bits)
    best, best_err = (lo, hi), float("inf")
    for f in torch.linspace(0.02, 1.0, grid).tolist():
        l, h = min(lo * f, 0.0), max(hi * f, 0.0)
        s, z = act_qparams(l, h, bits)
        q = (torch.clamp(torch.round(x / s) + z, qmin, qmax) - z) * s
        err = (q - x).pow(2).mean().item()
        if err < best_err:
            best, best_err = (l, h), err
    return best
