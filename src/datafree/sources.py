"""Resolve a data SOURCE argument: a SyntheticSet directory, a synthesis method name or a dataset spec."""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional

import torch.nn as nn

from .data.base import TensorData
from .data.real import DATASET_SPECS, is_dataset_spec, load_dataset
from .data.synthetic import SyntheticSet
from .errors import DatafreeError
from .models.loading import fingerprint, input_spec_of
from .synth.base import SYNTHESIZERS, make_config, synthesize


def load_source(source: str, model: nn.Module, num: Optional[int] = None, seed: int = 0,
                data_root: Optional[str] = None, progress: bool = True) -> TensorData:
    """Data for `model` from a SyntheticSet dir, an on-the-fly synthesis method, or a real dataset spec."""
    spec = input_spec_of(model)
    if is_dataset_spec(source):
        return load_dataset(source, spec, data_root).subset(num, seed)
    if source in SYNTHESIZERS:
        cfg = make_config(source, num=num or 512, seed=seed)
        return synthesize(model, source, cfg, progress=progress)
    p = Path(source)
    if p.is_dir():
        s = SyntheticSet(p)
        if tuple(s.input_spec.shape) != tuple(spec.shape):
            raise DatafreeError(f"synthetic set {source} has inputs {tuple(s.input_spec.shape)} but the model expects {tuple(spec.shape)}")
        fp = s.manifest.get("teacher_fingerprint")
        if fp and fp != fingerprint(model):
            print(f"warning: {source} was synthesized from a different model (fingerprint {fp})", file=sys.stderr)
        return s.data.subset(num, seed)
    if os.sep in source or source.startswith("."):
        raise DatafreeError(f"data source {source!r} not found; create it with `datafree synthesize ... --out {source}`")
    raise DatafreeError(f"unknown data source {source!r}; give a synthetic-set directory, a method "
                        f"({', '.join(SYNTHESIZERS.names())}) or a dataset spec ({', '.join(DATASET_SPECS)})")
