"""Supervised training of a classifier on labelled TensorData (used for the demo teacher and test models)."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..core.utils import model_device
from .base import TensorData


def train_classifier_(model: nn.Module, data: TensorData, epochs: int = 20, lr: float = 2e-3, batch_size: int = 64,
                      seed: int = 0, shift: int = 1, progress: bool = False) -> nn.Module:
    """Train `model` in place with Adam, cosine lr and random shifts of ±`shift` px; returns it in eval mode."""
    dev = model_device(model)
    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * ((len(data) + batch_size - 1) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(1, steps))
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, desc="train", leave=False, dynamic_ncols=True, disable=None)
    model.train()
    for ep in range(epochs):
        for xb, yb in data.labeled_batches(batch_size, shuffle=True, seed=seed * 1000 + ep):
            xb, yb = xb.to(dev), yb.to(dev)
            if shift:
                dx, dy = (int(v) for v in torch.randint(-shift, shift + 1, (2,)))
                xb = torch.roll(xb, (dx, dy), (2, 3))
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    if bar is not None:
        bar.close()
    return model.eval()
