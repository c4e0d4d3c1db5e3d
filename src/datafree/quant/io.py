"""Save a quantized model to one file and load it back with nothing else."""
from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from .._version import __version__
from ..errors import DatafreeError, first_line
from ..models.loading import create_model, fingerprint
from ..models.spec import InputSpec
from ..utils import save_atomic
from .prepare import wrap_layers_
from .ptq import QuantConfig, quant_layers

FORMAT = "datafree-quantized-v1"


def save_quantized(qmodel: nn.Module, path: str | os.PathLike, teacher: nn.Module | None = None, extra: dict | None = None) -> None:
    """Write a quantized model (source, plan, config, state) to one file."""
    source = dict(getattr(qmodel, "source", None) or {})
    if not source.get("model"):
        raise DatafreeError("quantized model has no source; build the teacher with datafree.load_model")
    model_ref = source["model"]
    if ".py:" in model_ref:
        f, _, attr = model_ref.rpartition(":")
        source["model"] = f"{Path(f).resolve()}:{attr}"
    obj: dict[str, Any] = {
        "format": FORMAT,
        "library_version": __version__,
        "source": {"model": source["model"], "num_classes": source.get("num_classes")},
        "input_spec": qmodel.input_spec.to_dict(),  # type: ignore[attr-defined]
        "config": qmodel.quant_config.to_dict(),  # type: ignore[attr-defined]
        "plan": qmodel.quant_plan,  # type: ignore[attr-defined]
        "act_quant": [q.act_quant for q in quant_layers(qmodel)],
        "teacher_fingerprint": fingerprint(teacher) if teacher is not None else None,
        "state_dict": qmodel.state_dict(),
        "extra": extra or {},
    }
    save_atomic(obj, path)


def _read_if_quantized(path: str | os.PathLike) -> dict | None:
    """The stored object if `path` is a file written by save_quantized, else None."""
    p = Path(path)
    if not p.is_file():
        return None
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception:
        return None
    return obj if isinstance(obj, dict) and obj.get("format") == FORMAT else None


def is_quantized_file(path: str | os.PathLike) -> bool:
    """Whether `path` is a file written by save_quantized."""
    return _read_if_quantized(path) is not None


def maybe_load_quantized(path: str | os.PathLike) -> nn.Module | None:
    """The quantized model in `path`, or None when `path` is not a quantized file (reads the file once)."""
    obj = _read_if_quantized(path)
    return None if obj is None else _build(obj, Path(path))


def load_quantized(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> nn.Module:
    """Rebuild a quantized model from its file."""
    p = Path(path)
    if not p.is_file():
        raise DatafreeError(f"quantized model {str(p)!r} not found; create it with `datafree quantize ... --out {p}`")
    try:
        obj = torch.load(p, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, OSError) as e:
        raise DatafreeError(f"{str(p)!r} is corrupt ({first_line(e, 120)}); re-run `datafree quantize`") from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise DatafreeError(f"{str(p)!r} is not a datafree quantized model file")
    return _build(obj, p)


def _build(obj: dict, p: Path) -> nn.Module:
    """Rebuild the quantized model from its stored object."""
    spec = InputSpec.from_dict(obj["input_spec"])
    model = create_model(obj["source"]["model"], num_classes=obj["source"].get("num_classes"), input_spec=spec)
    layers = wrap_layers_(model, obj["plan"])
    try:
        model.load_state_dict(obj["state_dict"])
    except RuntimeError as e:
        raise DatafreeError(f"{str(p)!r} does not match model {obj['source']['model']} ({first_line(e, 120)})") from None
    for q, on in zip(layers, obj["act_quant"]):
        q.act_quant = bool(on)
    model.source = dict(obj["source"], quantized_file=str(p))  # type: ignore[attr-defined]
    model.quant_plan = obj["plan"]  # type: ignore[attr-defined]
    model.quant_config = QuantConfig.from_dict(obj["config"])  # type: ignore[attr-defined]
    model.input_spec = spec  # type: ignore[attr-defined]
    return model.eval()
