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

from .._version import __version__
from ..core.errors import DatafreeError, first_line
from ..core.schema import MISFIT_ERRORS, Schema
from ..core.utils import load_tensors, save_atomic
from ..models.loading import check_finite, create_model, fingerprint, load_model, load_state_dict_
from ..models.record import record_of
from ..models.spec import InputSpec
from .base import COMPRESSORS, transforms_of

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
    src = dict(record_of(model).source)
    if not src.get("model"):
        raise DatafreeError("the model has no source reference; build it with datafree.load_model or create_model")
    ref = str(src["model"])
    spec = record_of(model).input_spec
    fresh = create_model(ref, num_classes=src.get("num_classes"), input_spec=spec)  # user files were imported already
    return {"model": ref, "num_classes": src.get("num_classes"), "weights": src.get("weights"),
            "arch": arch_fingerprint(fresh)}


def save_artifact(model: nn.Module, path: str | os.PathLike, teacher: Optional[nn.Module] = None,
                  extra: Optional[dict] = None) -> Path:
    """Write a compressed model (base reference, transforms with configs, state dict, version) to one file, atomically."""
    spec = record_of(model).input_spec
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
    """The stored object if `path` is an artifact (this format or the legacy quantized one), else None; never runs code.
    A torch file that cannot be read (truncated, damaged) is a DatafreeError calling it corrupt, not None."""
    p = Path(path)
    if not p.is_file():
        return None
    with open(p, "rb") as f:
        magic = f.read(4)
    if magic[:2] != b"PK":  # torch files are zip archives; anything else is not ours
        return None
    obj = load_tensors(p, "is corrupt or truncated (it cannot be read back)", "re-create it")
    return _as_artifact(obj, str(p))


def _as_artifact(obj: Any, where: str = "the file") -> Optional[dict]:
    """A loaded object as an artifact dict (legacy quantized files converted), or None when it is none."""
    if not isinstance(obj, dict):
        return None
    if obj.get("format") == LEGACY_QUANTIZED:
        return _from_legacy_quantized(obj, where)
    return obj if obj.get("format") == FORMAT else None


def _from_legacy_quantized(obj: dict, where: str) -> dict:
    """A datafree 0.1 quantized file as an artifact: one `quantize` transform (its fields checked first)."""
    s = Schema(where, "re-create it with `datafree quantize`")
    src = s.get(obj, "source", dict)
    s.get(src, "model", str, "source")
    s.number(src, "num_classes", "source", lo=1, required=False, nullable=True)
    for k, t in (("input_spec", dict), ("config", dict), ("plan", list), ("act_quant", list), ("state_dict", dict)):
        s.get(obj, k, t)
    s.get(obj, "library_version", (str, type(None)), required=False)
    s.get(obj, "teacher_fingerprint", (str, type(None)), required=False)
    return {"format": FORMAT, "library_version": obj.get("library_version"), "legacy": LEGACY_QUANTIZED,
            "base": {"model": src.get("model"), "num_classes": src.get("num_classes"), "arch": None},
            "input_spec": obj["input_spec"],
            "transforms": [{"compressor": "quantize", "config": obj["config"], "plan": obj["plan"],
                            "act_quant": obj["act_quant"]}],
            "teacher_fingerprint": obj.get("teacher_fingerprint"), "state_dict": obj["state_dict"],
            "extra": obj.get("extra", {})}


def check_artifact(obj: dict, where: str) -> Schema:
    """Check an artifact's fields (types, known compressors, valid configs, finite tensors) before anything is built."""
    s = Schema(where, "re-create it with the datafree command that wrote it")
    s.mapping(obj, "(top level)")
    s.get(obj, "format", str)
    s.get(obj, "library_version", (str, type(None)), required=False)
    base = s.get(obj, "base", dict)
    s.get(base, "model", str, "base")
    if not base["model"]:
        s.fail("base.model", "is empty")
    s.number(base, "num_classes", "base", lo=1, required=False, nullable=True)
    s.get(base, "weights", (str, type(None)), "base", required=False)
    s.get(base, "arch", (str, type(None)), "base", required=False)
    s.spec(obj, InputSpec)
    ts = s.get(obj, "transforms", list)
    for i, t in enumerate(ts):
        f = f"transforms[{i}]"
        s.mapping(t, f)
        name = s.get(t, "compressor", str, f)
        if name not in COMPRESSORS:
            raise DatafreeError(f"{where} applies compressor {name!r}, which this datafree {__version__} does not know; "
                                "upgrade datafree")
        s.config(COMPRESSORS.get(name).config_cls, s.get(t, "config", dict, f), f + ".config")
    s.get(obj, "teacher_fingerprint", (str, type(None)), required=False)
    s.tensors(s.get(obj, "state_dict", dict), "state_dict")
    s.get(obj, "extra", dict, required=False)
    return s


def is_artifact(path: str | os.PathLike) -> bool:
    """Whether `path` holds a datafree artifact."""
    return read_artifact(path) is not None


def load_artifact(path: str | os.PathLike, model_file: Optional[str] = None) -> nn.Module:
    """Rebuild a compressed model from its file: the base model, each transform's structure, then the state dict."""
    p = Path(path)
    if not p.is_file():
        raise DatafreeError(f"model file {str(p)!r} not found; check the path")
    obj = _as_artifact(load_tensors(p, "is corrupt, truncated or not a datafree artifact", "re-create it"), str(p))
    if obj is None:
        raise DatafreeError(f"{str(p)!r} is not a datafree artifact (a plain state dict loads with MODEL --weights FILE)")
    return build_artifact(obj, str(p), model_file)


def build_artifact(obj: dict, where: str, model_file: Optional[str] = None) -> nn.Module:
    """The model an artifact object describes (every field checked against the rebuilt architecture first)."""
    s = check_artifact(obj, where)
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
    for i, t in enumerate(obj["transforms"]):
        name, field = t["compressor"], f"transforms[{i}]"
        c = COMPRESSORS.get(name)
        if c.check is not None:
            c.check(s, model, t, field)
        try:
            model = c.rebuild(model, t, sd)
        except DatafreeError as e:
            s.fail(field, f"({name}) cannot be rebuilt on {ref}: {e}")
        except MISFIT_ERRORS as e:
            s.fail(field, f"({name}) cannot be rebuilt on {ref} ({type(e).__name__}: {first_line(e)})")
    load_state_dict_(model, sd, f"{where}: field 'state_dict': its tensors")
    rec = record_of(model)
    rec.input_spec, rec.transforms = spec, list(obj["transforms"])
    rec.source = {"model": ref, "num_classes": base.get("num_classes"), "artifact": where,
                  **({"model_file": model_file} if model_file else {})}
    return model.eval()


# the names of datafree 0.1, kept for the library API
save_quantized = save_artifact


def load_quantized(path: str | os.PathLike, map_location: str | torch.device = "cpu", model_file: Optional[str] = None) -> nn.Module:
    """Rebuild a quantized (or any compressed) model from its file."""
    return load_artifact(path, model_file).to(map_location)


def load_any(ref: str, weights: Optional[str] = None, num_classes: Optional[int] = None,
             input_spec: Optional[InputSpec] = None, model_file: Optional[str] = None) -> nn.Module:
    """A model from a zoo name or `file.py:factory` (+ weights), or from a file written by datafree (its transforms
    chain: compress it further); weights with NaN or infinite values are refused."""
    if model_file and not os.path.isfile(ref):
        raise DatafreeError(f"--model-file is for files written by datafree; {ref} is not one")
    if os.path.isfile(ref):
        obj = read_artifact(ref)
        if obj is None:
            raise DatafreeError(f"{ref} is not a model file written by datafree; give a zoo name or file.py:factory "
                                "with --weights")
        if weights:
            raise DatafreeError(f"{ref} is a datafree artifact and holds its own weights; drop --weights")
        return check_finite(build_artifact(obj, ref, model_file), ref)
    return check_finite(load_model(ref, weights, num_classes=num_classes, input_spec=input_spec), weights or ref)
