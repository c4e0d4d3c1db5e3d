"""The `distill` compressor: a (smaller) student trained by the resumable KD run from any data source."""
from __future__ import annotations

from typing import Any, Optional

import torch.nn as nn

from ..core.errors import DatafreeError
from ..core.schema import Schema
from ..data.source import SourceLike
from ..kd.loop import KDConfig
from ..kd.run import distill_student_
from ..models.loading import fingerprint
from ..models.record import record_of
from .base import no_rebuild, record_transform, register_compressor


def _apply(teacher: nn.Module, data: Optional[SourceLike], config: KDConfig, student: Optional[nn.Module] = None,
           progress: bool = False, **kw: Any) -> nn.Module:
    """Distill `teacher` into `student` (a model built with create_model/load_model) on `data`; keywords go to the
    resumable run (checkpoint_dir, val, overwrite, checkpoint_every, time_limit) and `data_name` to the record."""
    if student is None:
        raise DatafreeError("distill needs a student model (student=...)")
    if data is None:
        raise DatafreeError("distill needs data (a synthetic set, method or dataset spec)")
    data_name = kw.pop("data_name", None)
    summary = distill_student_(student, teacher, config, data, progress=progress, **kw)
    record_of(student).reports["distill"] = summary  # steps, samples, seconds, losses, validation curve
    return record_distill(student, teacher, config, **({"data": data_name} if data_name else {}))


def record_distill(student: nn.Module, teacher: nn.Module, kd: KDConfig, **extra: Any) -> nn.Module:
    """Record the `distill` transform (its KD config and the teacher's fingerprint) on the student."""
    return record_transform(student, "distill", kd, teacher=fingerprint(teacher), **extra)


def _check(s: Schema, model: nn.Module, t: dict, field: str) -> None:
    """A stored distill record: the teacher's fingerprint, if any."""
    s.get(t, "teacher", (str, type(None)), field, required=False)


register_compressor("distill", KDConfig, _apply, no_rebuild,
                    "train a (smaller) student to match the teacher's logits on a data source", _check)
