"""Adapt a freshly built model to a state dict with fewer channels (a pruned model)."""
from __future__ import annotations

import torch
import torch.nn as nn

PRUNED_MARKER = "_datafree_pruned"  # tensor key in a saved state dict whose channel counts differ from the zoo model


def resize_to_state_dict_(model: nn.Module, sd: dict[str, torch.Tensor]) -> nn.Module:
    """Shrink conv / BN / linear layers so a pruned state dict (fewer channels) loads into a fresh model."""
    for name, m in model.named_modules():
        w = sd.get(f"{name}.weight" if name else "weight")
        if w is None:
            continue
        if isinstance(m, nn.Conv2d) and tuple(w.shape) != tuple(m.weight.shape):
            m.weight = nn.Parameter(torch.empty_like(w))
            m.out_channels, m.in_channels = w.shape[0], w.shape[1] * m.groups
            if m.bias is not None:
                m.bias = nn.Parameter(torch.empty(w.shape[0]))
        elif isinstance(m, nn.BatchNorm2d) and w.shape[0] != m.num_features:
            c = w.shape[0]
            m.num_features = c
            m.weight, m.bias = nn.Parameter(torch.ones(c)), nn.Parameter(torch.zeros(c))
            m.running_mean, m.running_var = torch.zeros(c), torch.ones(c)
        elif isinstance(m, nn.Linear) and tuple(w.shape) != tuple(m.weight.shape):
            m.weight = nn.Parameter(torch.empty_like(w))
            m.out_features, m.in_features = w.shape
    return model


def mark_pruned_(model: nn.Module) -> nn.Module:
    """Carry the pruned marker as a buffer, so every state dict of the model says it needs reshaping on load."""
    if PRUNED_MARKER not in dict(model.named_buffers(recurse=False)):
        model.register_buffer(PRUNED_MARKER, torch.tensor(1))
    return model
