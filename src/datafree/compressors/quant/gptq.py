"""Second-order weight rounding (GPTQ: Frantar et al. 2023, the one-pass form of OBQ, Frantar & Alistarh 2022).

Each quantized layer's weights are rounded one input column at a time; the error of each rounded column is spread over
the columns not yet rounded through the inverse of H = E[x xᵀ], the second moments of the layer's (quantized) input
patches, so that the layer's output on inputs with those moments changes as little as possible. It needs only H per
layer, not gradients or iterations: one pass over the calibration samples, layers in execution order, each seeing the
already-rounded layers before it (the same pass as bias correction, which then absorbs the remaining mean shift).
A convolution's column is one (input channel, kernel position); grouped and depthwise convolutions have one H per group.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from .quantizer import WeightRounding, signed_range

MAX_UNFOLD = 1 << 25  # values of one chunk of unfolded input patches


class FixedRounding(WeightRounding):
    """A rounding chosen elsewhere (GPTQ): the stored integers, whatever the weight; baked into the weight after the
    pass that chose them."""

    def __init__(self, ints: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("ints", ints)

    def forward(self, w_over_s: torch.Tensor) -> torch.Tensor:
        return self.ints.to(w_over_s.dtype)


def _pair(v: Any) -> tuple[int, int]:
    """An int or a 1- / 2-sequence (tuple or list, as modules store them) as a 2-tuple."""
    v = tuple(v) if isinstance(v, (tuple, list)) else (v,)
    return (int(v[0]), int(v[-1]))


@torch.no_grad()
def input_moments(kind: str, conv_args: dict[str, Any], weight_shape: torch.Size, x: torch.Tensor) -> torch.Tensor:
    """Σ x xᵀ over the samples and positions of `x` (a layer's input), one matrix per group: [groups, D, D] with D
    the weights of one output channel (in the order of weight[o].flatten())."""
    x = x.detach().double()
    if kind == "linear":
        flat = x.reshape(-1, x.shape[-1])
        return (flat.T @ flat)[None]
    g = int(conv_args.get("groups", 1))
    k = tuple(weight_shape[2:])
    stride, dil = _pair(conv_args.get("stride", 1)), _pair(conv_args.get("dilation", 1))
    pad = conv_args.get("padding", 0)
    pad = pad if isinstance(pad, str) else _pair(pad)
    if g == 1 and k == (1, 1) and pad == (0, 0):
        flat = x[:, :, ::stride[0], ::stride[1]].permute(0, 2, 3, 1).reshape(-1, x.shape[1])
        return (flat.T @ flat)[None]
    if isinstance(pad, str):  # "same" / "valid": as symmetric zero padding (the border is a small share of patches)
        pad = (0, 0) if pad == "valid" else tuple((kk - 1) * dd // 2 for kk, dd in zip(k, dil))
    d_in = x.shape[1] // g * k[0] * k[1]
    h = torch.zeros(g, d_in, d_in, dtype=x.dtype, device=x.device)
    per = max(1, MAX_UNFOLD // max(1, x[0].numel() * k[0] * k[1]))
    for i in range(0, x.shape[0], per):
        u = F.unfold(x[i:i + per], k, dilation=dil, padding=pad, stride=stride)  # [n, C*kh*kw, L]
        u = u.view(u.shape[0], g, d_in, u.shape[-1])
        h += torch.einsum("ngil,ngjl->gij", u, u)
    return h


@torch.no_grad()
def gptq_ints(w: torch.Tensor, scale: torch.Tensor, h: torch.Tensor, bits: int, damp: float = 0.01,
              act_order: bool = True) -> torch.Tensor:
    """Integers on the signed `bits`-bit grid for weights `w` [groups, rows, D] with per-row steps `scale`
    [groups, rows], rounded column by column with the error spread through H⁻¹ (`h` [groups, D, D], the input's second
    moments); `damp` × mean diagonal is added to H, `act_order` rounds the columns with the largest input energy first."""
    qmin, qmax = signed_range(bits)
    g, _, d = w.shape
    h = h.double().clone()
    w = w.double().clone()
    s = scale.double()
    diag = torch.diagonal(h, dim1=1, dim2=2)
    dead = diag <= 0
    diag[dead] = 1.0  # an input never seen: its column's error is not spread
    eye = torch.eye(d, dtype=h.dtype, device=h.device)
    mean = diag.mean(1).view(g, 1, 1)
    perm = torch.argsort(diag, dim=1, descending=True) if act_order else torch.arange(d, device=h.device).expand(g, d)
    h = torch.gather(torch.gather(h, 1, perm.unsqueeze(-1).expand(g, d, d)), 2, perm.unsqueeze(1).expand(g, d, d))
    w = torch.gather(w, 2, perm.unsqueeze(1).expand_as(w))
    u = None
    for f in (1.0, 10.0, 100.0):
        chol, info = torch.linalg.cholesky_ex(h + damp * f * mean * eye)
        if bool((info == 0).all()):
            hinv = torch.cholesky_inverse(chol)
            u, info = torch.linalg.cholesky_ex(hinv, upper=True)
            if bool((info == 0).all()):
                break
            u = None
    ints = torch.empty_like(w)
    for j in range(d):
        col = w[:, :, j]
        q = torch.clamp(torch.round(col / s), qmin, qmax)
        ints[:, :, j] = q
        if u is not None and j + 1 < d:
            err = (col - q * s) / u[:, j, j].unsqueeze(1)
            w[:, :, j + 1:] -= err.unsqueeze(-1) * u[:, j, j + 1:].unsqueeze(1)
    return torch.empty_like(ints).scatter_(2, perm.unsqueeze(1).expand_as(ints), ints)


def grouped(weight: torch.Tensor, groups: int) -> torch.Tensor:
    """A conv/linear weight [out, ...] as [groups, out/groups, D]."""
    return weight.reshape(groups, weight.shape[0] // groups, -1)
