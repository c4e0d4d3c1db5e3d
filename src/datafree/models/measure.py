"""What a model costs: multiply-accumulates of one forward and storage in bits, asked of its layers."""
from __future__ import annotations

import torch
import torch.nn as nn

from .loading import input_spec_of


def _macs(m: nn.Module, out: torch.Tensor) -> int:
    """MACs of one sample through layer `m` (a layer that computes differently declares `macs(out)`)."""
    own = getattr(m, "macs", None)
    if callable(own):
        return int(own(out))
    if isinstance(m, nn.Conv2d):
        return out[0].numel() * m.weight[0].numel()  # (in/groups)·kh·kw per output value
    if isinstance(m, nn.Linear):
        return m.in_features * m.out_features
    return 0


def count_flops_params(model: nn.Module) -> dict[str, int]:
    """Multiply-accumulates of one forward (conv, linear and layers declaring `macs`) and nonzero / total parameters."""
    spec = input_spec_of(model)
    macs = [0]

    def hook(m: nn.Module, inp: tuple, out: torch.Tensor) -> None:
        macs[0] += _macs(m, out)

    counted = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)) or callable(getattr(m, "macs", None))]
    hs = [m.register_forward_hook(hook) for m in counted]
    was = model.training
    model.eval()
    try:
        p0 = next(iter(model.parameters()))
        with torch.no_grad():
            model(torch.zeros(1, *spec.shape, device=p0.device, dtype=p0.dtype))
    finally:
        for h in hs:
            h.remove()
        model.train(was)
    params = [p for p in model.parameters()]
    return {"flops": int(macs[0]), "params": int(sum(p.numel() for p in params)),
            "nonzero_params": int(sum(int((p != 0).sum()) for p in params))}


def model_size_bits(model: nn.Module) -> int:
    """Storage in bits: layers that declare `size_bits()` (quantized, hashed) count themselves, every other
    parameter 32 bits."""
    total, counted = 0, set()
    for m in model.modules():
        own = getattr(m, "size_bits", None)
        if callable(own) and m is not model:
            total += int(own())
            counted.update(id(p) for p in m.parameters())
    total += sum(p.numel() * 32 for p in model.parameters() if id(p) not in counted)
    return total
