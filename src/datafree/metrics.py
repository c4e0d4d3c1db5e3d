"""Accuracy, agreement with a teacher, model size and the BN-statistics similarity score."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn

from .data.base import TensorData
from .synth.base import frozen_eval, model_device


@torch.no_grad()
def predict(model: nn.Module, data: TensorData, batch_size: int = 256) -> torch.Tensor:
    """Argmax predictions of `model` on `data` (model left in its original mode)."""
    dev = model_device(model)
    with frozen_eval(model):
        return torch.cat([model(xb.to(dev)).argmax(1).cpu() for xb in data.batches(batch_size)])


def model_size_bits(model: nn.Module) -> int:
    """Storage in bits: quantized layers at their bit width, everything else (params only) at 32 bits."""
    from .quant.layers import QuantLayer

    total, counted = 0, set()
    for m in model.modules():
        if isinstance(m, QuantLayer):
            total += m.size_bits()
            counted.update(id(p) for p in m.parameters())
    total += sum(p.numel() * 32 for p in model.parameters() if id(p) not in counted)
    return total


def evaluate(model: nn.Module, data: TensorData, teacher: Optional[nn.Module] = None, batch_size: int = 256,
             teacher_pred: Optional[torch.Tensor] = None) -> dict:
    """Top-1 (percent) on labelled data, agreement with `teacher` (or its precomputed predictions), size in bits."""
    if data.y is None:
        raise ValueError(f"{data.name} has no labels to evaluate against")
    pred = predict(model, data, batch_size)
    out = {"top1": round(100.0 * (pred == data.y).float().mean().item(), 3), "n": len(data),
           "data": data.name, "size_bits": model_size_bits(model)}
    if teacher is not None or teacher_pred is not None:
        tpred = teacher_pred if teacher_pred is not None else predict(teacher, data, batch_size)  # type: ignore[arg-type]
        out["agreement"] = round(100.0 * (pred == tpred).float().mean().item(), 3)
        out["teacher_top1"] = round(100.0 * (tpred == data.y).float().mean().item(), 3)
    return out
