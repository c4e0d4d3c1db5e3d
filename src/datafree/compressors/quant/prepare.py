"""Find conv/linear layers and the BatchNorm each feeds (by tensor identity), and swap in QuantLayers."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn

from ...core.errors import DatafreeError
from ...core.utils import set_module
from .layers import QuantLayer

_FOLDABLE_BN = (nn.BatchNorm1d, nn.BatchNorm2d)


def trace_layers(model: nn.Module, example: torch.Tensor) -> list[tuple[str, Optional[str]]]:
    """(layer name, name of the BN it feeds or None) for every conv/linear, in execution order."""
    order: list[str] = []
    produced: dict[int, tuple[str, torch.Tensor]] = {}
    feeds: dict[str, str] = {}
    handles = []
    for name, m in model.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            def post(mod, inp, out, name=name):
                if name not in order:
                    order.append(name)
                produced[id(out)] = (name, out)
            handles.append(m.register_forward_hook(post))
        elif isinstance(m, _FOLDABLE_BN) and m.track_running_stats and m.running_mean is not None:
            def pre(mod, inp, name=name):
                src = produced.get(id(inp[0]))
                if src is not None and src[1] is inp[0]:
                    feeds.setdefault(src[0], name)
            handles.append(m.register_forward_pre_hook(pre))
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in handles:
            h.remove()
        model.train(was)
    bn_users = list(feeds.values())
    return [(n, feeds.get(n) if bn_users.count(feeds.get(n)) == 1 else None) for n in order]


def wrap_layers_(model: nn.Module, plan: list[dict]) -> list[QuantLayer]:
    """Replace each planned layer by a QuantLayer (folding its BN, which becomes Identity); in place. A subclass with its
    own forward is checked to compute the same function as the layer (+ BN) before any rounding, else refused."""
    out = []
    for entry in plan:
        layer = model.get_submodule(entry["name"])
        bn = model.get_submodule(entry["bn"]) if entry.get("bn") else None
        try:
            q = QuantLayer(layer, bn, entry["w_bits"], entry["a_bits"])
        except DatafreeError as e:
            raise DatafreeError(f"layer {entry['name']!r}: {e}") from None
        if q._inner is not None:
            _check_same_function(entry["name"], layer, bn, q)
        set_module(model, entry["name"], q)
        if entry.get("bn"):
            set_module(model, entry["bn"], nn.Identity())
        out.append(q)
    return out


@torch.no_grad()
def _check_same_function(name: str, layer: nn.Module, bn: Optional[nn.Module], q: QuantLayer) -> None:
    """The subclass's forward with the folded weights must equal layer (+ BN): a forward that transforms its weight
    (weight standardization) would not, and is refused in one line."""
    p = next(layer.parameters())
    gen = torch.Generator().manual_seed(0)  # its own probe: the caller's random stream is left as it was
    if q.kind == "conv2d":
        k = max(max(layer.kernel_size) * max(layer.dilation), 1)
        shape: tuple[int, ...] = (2, layer.in_channels, 2 * k + 5, 2 * k + 5)
    else:
        shape = (2, layer.in_features)
    x = torch.randn(shape, generator=gen, dtype=p.dtype).to(p.device)
    modes = [(m, m.training) for m in (layer, bn) if m is not None]
    try:
        for m, _ in modes:
            m.eval()
        ref = layer(x) if bn is None else bn(layer(x))
    finally:
        for m, t in modes:
            m.train(t)
    got = q.op(x, q.weight, q.bias)
    zero = torch.zeros_like(q.bias)
    once, twice = q.op(x, q.weight, zero), q.op(x, 2 * q.weight, zero)  # a convolution is linear in its weight
    close = lambda u, v: u.shape == v.shape and torch.allclose(u, v, rtol=1e-3, atol=1e-4 * float(v.abs().max()) + 1e-6)  # noqa: E731
    if not (close(got, ref) and close(twice, 2 * once)):
        raise DatafreeError(f"layer {name!r} ({type(layer).__name__}) does more than a convolution with its weight in "
                            "its forward (e.g. it standardizes the weight), so its quantized copy would compute another "
                            "function; datafree cannot quantize it: replace it by a plain layer with the transformed "
                            "weight, or use a compressor that keeps it float")
