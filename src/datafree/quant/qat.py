"""Quantization-aware fine-tuning by distillation: learnable step sizes (LSQ-style) plus the KD loop."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn

from ..data.base import TensorData
from ..distill import KDConfig, distill_
from .graph import act_quantizers, tensor_quants
from .layers import FLOAT_BITS, as_parameter_, quant_layers


def enable_learned_steps_(qmodel: nn.Module) -> list[nn.Parameter]:
    """Make weight and input step sizes trainable (initialized from calibration); returns them."""
    out = []
    for q in quant_layers(qmodel):
        if q.w_bits < FLOAT_BITS:
            as_parameter_(q, "w_scale")
            out.append(q.w_scale)
        if q.a_bits < FLOAT_BITS and q.act_quant:
            as_parameter_(q, "a_scale")
            out.append(q.a_scale)
    for t in tensor_quants(qmodel, own_only=True):
        if t.act_quant:
            as_parameter_(t, "a_scale")
            out.append(t.a_scale)
    return out


def finetune_quantized_(qmodel: nn.Module, teacher: nn.Module, data: TensorData, config: Optional[KDConfig] = None,
                        val: Optional[TensorData] = None, progress: bool = True) -> list[dict]:
    """KD fine-tuning of a calibrated quantized model (weights, biases and step sizes) in place."""
    enable_learned_steps_(qmodel)
    for q in quant_layers(qmodel):
        with torch.no_grad():
            q.w_scale.clamp_(min=1e-8)
    hist = distill_(qmodel, teacher, data, config, val=val, progress=progress)
    with torch.no_grad():
        for q in quant_layers(qmodel):
            q.w_scale.clamp_(min=1e-8)
        for q in act_quantizers(qmodel):
            q.a_scale.clamp_(min=1e-8)
    return hist
