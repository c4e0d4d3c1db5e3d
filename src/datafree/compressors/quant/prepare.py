"""Find conv/linear layers and the BatchNorm each feeds (by tensor identity), and swap in QuantLayers."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn

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
    """Replace each planned layer by a QuantLayer (folding its BN, which becomes Identity); in place."""
    out = []
    for entry in plan:
        layer = model.get_submodule(entry["name"])
        bn = model.get_submodule(entry["bn"]) if entry.get("bn") else None
        q = QuantLayer(layer, bn, entry["w_bits"], entry["a_bits"])
        set_module(model, entry["name"], q)
        if entry.get("bn"):
            set_module(model, entry["bn"], nn.Identity())
        out.append(q)
    return out
