"""One artifact format for every compressor: base model reference, applied transforms, state dict, library version.

Loading never imports code the file names: zoo models are built by name; a model from a user file needs that file
given explicitly (`model_file`), and its architecture is checked against the fingerprint stored at save time.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn as nn

from . import continual, hashing, prune, student  # noqa: F401  (register their compressors)
from . import quant  # noqa: F401
from ._version import __version__
from .compress import COMPRESSORS, transforms_of
from .errors import DatafreeError
from .models.loading import create_model, fingerprint, load_state_dict_
from .models.spec import InputSpec
from .utils import load_tensors, save_atomic

FORMAT = "datafree-artifact-v1"
LEGACY_QUANTIZED = "datafree-quantized-v1"  # written by datafree 0.1 `quantize`; still loads


def is_user_model(ref: str) -> bool:
    """Whether a model reference names a Python file (`path/to/file.py:factory`) rather than a zoo model."""
    return ".py:" in ref or ref.endswith(".py")


def arch_fingerprint(model: nn.Module) -> str:
    """Short sha256 of a model's parameter/buffer names and shapes (its architecture, not its values)."""
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(f"{k}:{tuple(v.shape)};".encode())
    return h.hexdigest()[:16]


def _base_of(model: nn.Module) -> dict[str, Any]:
    src = dict(getattr(model, "source", None) or {})
    if not src.get("model"):
        raise DatafreeError("the model has no source reference; build it with datafree.load_model or create_model")
    ref = str(src["model"])
    spec = getattr(model, "input_spec", None)
    fresh = create_model(ref, num_classes=src.get("num_classes"), input_spec=spec)  # user files were imported already
    return {"model": ref, "num_classes": src.get("num_classes"), "weights": src.get("weights"),
            "arch": arch_fingerprint(fresh)}


def save_artifact(model: nn.Module, path: str | os.PathLike, teacher: Optional[nn.Module] = None,
                  extra: Optional[dict] = None) -> Path:
    """Write a compressed model (base reference, transforms with configs, state dict, version) to one file, atomically."""
    spec = getattr(model, "input_spec", None)
    if spec is None:
        raise DatafreeError("the model has no input_spec; set model.input_spec = datafree.InputSpec(...)")
    obj: dict[str, Any] = {
        "format": FORMAT,
        "library_version": __version__,
        "base": _base_of(model),
        "input_spec": spec.to_dict(),
        "transforms": transforms_of(model),
        "teacher_fingerprint": fingerprint(teacher) if teacher is not None else None,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "extra": extra or {},
    }
    return save_atomic(obj, path)


def read_artifact(path: str | os.PathLike) -> Optional[dict]:
    """The stored object if `path` is an artifact (this format or the legacy quantized one), else None; never runs code."""
    p = Path(path)
    if not p.is_file():
        return None
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception:
        return None
    return _as_artifact(obj)


def _as_artifact(obj: Any) -> Optional[dict]:
    """A loaded object as an artifact dict (legacy quantized files converted), or None when it is none."""
    if not isinstance(obj, dict):
        return None
    if obj.get("format") == LEGACY_QUANTIZED:
        return _from_legacy_quantized(obj)
    return obj if obj.get("format") == FORMAT else None


def _from_legacy_quantized(obj: dict) -> dict:
    """A datafree 0.1 quantized file as an artifact: one `quantize` transform."""
    src = obj.get("source") or {}
    return {"format": FORMAT, "library_version": obj.get("library_version"), "legacy": LEGACY_QUANTIZED,
            "base": {"model": src.get("model"), "num_classes": src.get("num_classes"), "arch": None},
            "input_spec": obj["input_spec"],
            "transforms": [{"compressor": "quantize", "config": obj["config"], "plan": obj["plan"],
                            "act_quant": obj["act_quant"]}],
            "teacher_fingerprint": obj.get("teacher_fingerprint"), "state_dict": obj["state_dict"],
            "extra": obj.get("extra", {})}


def is_artifact(path: str | os.PathLike) -> bool:
    """Whether `path` holds a datafree artifact."""
    return read_artifact(path) is not None


def load_artifact(path: str | os.PathLike, model_file: Optional[str] = None) -> nn.Module:
    """Rebuild a compressed model from its file: the base model, each transform's structure, then the state dict."""
    p = Path(path)
    if not p.is_file():
        raise DatafreeError(f"model file {str(p)!r} not found; check the path")
    obj = _as_artifact(load_tensors(p, "is corrupt or not a datafree artifact", "re-create it"))
    if obj is None:
        raise DatafreeError(f"{str(p)!r} is not a datafree artifact (a plain state dict loads with MODEL --weights FILE)")
    return build_artifact(obj, str(p), model_file)


def build_artifact(obj: dict, where: str, model_file: Optional[str] = None) -> nn.Module:
    """The model an artifact object describes."""
    base = obj["base"]
    ref = str(base.get("model") or "")
    spec = InputSpec.from_dict(obj["input_spec"])
    if is_user_model(ref) and model_file is None:
        raise DatafreeError(f"{where} was built from the user model {ref}; files never choose code to run, so pass "
                            f"its definition explicitly: --model-file path/to/file.py:factory")
    if model_file is not None and not is_user_model(model_file):
        raise DatafreeError(f"--model-file must be path/to/file.py:factory, got {model_file!r}")
    model = create_model(model_file or ref, num_classes=base.get("num_classes"), input_spec=spec)
    if base.get("arch") and arch_fingerprint(model) != base["arch"]:
        raise DatafreeError(f"{where} was built from a different architecture than {model_file or ref} "
                            f"(fingerprint {base['arch']} vs {arch_fingerprint(model)}); give the model file it was made from")
    sd = obj["state_dict"]
    for t in obj["transforms"]:
        name = t.get("compressor")
        if name not in COMPRESSORS:
            raise DatafreeError(f"{where} applies compressor {name!r}, which this datafree {__version__} does not know; "
                                "upgrade datafree")
        model = COMPRESSORS.get(name).rebuild(model, t, sd)
    load_state_dict_(model, sd, where)
    model.input_spec = spec  # type: ignore[attr-defined]
    model.transforms = list(obj["transforms"])  # type: ignore[attr-defined]
    model.source = {"model": ref, "num_classes": base.get("num_classes"), "artifact": where,  # type: ignore[attr-defined]
                    **({"model_file": model_file} if model_file else {})}
    return model.eval()


# the names of datafree 0.1, kept for the library API
save_quantized = save_artifact


def load_quantized(path: str | os.PathLike, map_location: str | torch.device = "cpu", model_file: Optional[str] = None) -> nn.Module:
    """Rebuild a quantized (or any compressed) model from its file."""
    return load_artifact(path, model_file).to(map_location)
