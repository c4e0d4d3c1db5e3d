"""One typed record per model: what datafree knows about it (inputs, origin, head) and what compressors did to it."""
from __future__ import annotations

import dataclasses
from typing import Any, Optional

import torch.nn as nn

from .spec import InputSpec

RECORD_ATTR = _ATTR = "_datafree_record"  # the one attribute datafree sets on a model


@dataclasses.dataclass
class ModelRecord:
    """Input spec, origin, classifier head, applied transforms, and what each compressor measured."""

    input_spec: Optional[InputSpec] = None
    source: dict[str, Any] = dataclasses.field(default_factory=dict)  # model ref, weights, num_classes, artifact
    head: Optional[str] = None  # the classifier layer when the model's class does not declare `head_name`
    transforms: list[dict] = dataclasses.field(default_factory=list)  # what compressors did, in order (stored)
    reports: dict[str, dict] = dataclasses.field(default_factory=dict)  # compressor name -> what it measured
    quant_plan: Optional[list[dict]] = None  # quantize: one entry per conv/linear (name, bn, bits)
    quant_config: Any = None  # quantize: its QuantConfig
    hash_entries: list[tuple[str, str, int, int]] = dataclasses.field(default_factory=list)  # hash: tensors read from X·Y


def record_of(model: nn.Module) -> ModelRecord:
    """The model's record, created on first use; a `model.input_spec` the user set moves into it."""
    rec = model.__dict__.get(_ATTR)
    if rec is None:
        rec = model.__dict__[_ATTR] = ModelRecord()
    if "input_spec" in model.__dict__:  # set by the user on their own model: it becomes the record's
        rec.input_spec = model.__dict__.pop("input_spec")
    return rec

