"""Resolve a MODEL argument (zoo name or `file.py:factory`) and load weights safely."""
from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import os
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn as nn

from ..core.errors import DatafreeError, first_line
from ..core.utils import load_tensors
from .record import record_of
from .resize import PRUNED_MARKER, mark_pruned_, resize_to_state_dict_
from .spec import InputSpec
from .zoo import MODELS


def list_models() -> list[str]:
    """Names of all zoo models."""
    return MODELS.names()


def _load_factory(ref: str):
    path, _, attr = ref.rpartition(":")
    p = Path(path)
    if not p.is_file():
        raise DatafreeError(f"model file {path!r} not found; give a zoo name ({', '.join(list_models())}) or path/to/file.py:factory")
    mod_name = "datafree_user_" + hashlib.sha1(str(p.resolve()).encode()).hexdigest()[:10]
    spec = importlib.util.spec_from_file_location(mod_name, p)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # user code: report, don't trace
        raise DatafreeError(f"importing {path} failed: {type(e).__name__}: {e}") from None
    if not hasattr(module, attr):
        raise DatafreeError(f"{path} has no attribute {attr!r}; expected a factory returning an nn.Module")
    return module, getattr(module, attr)


def create_model(name: str, num_classes: Optional[int] = None, input_spec: Optional[InputSpec] = None) -> nn.Module:
    """Build an untrained model from a zoo name or `path/to/file.py:factory`; its record (`record_of`) carries the input spec and where it came from."""
    if name.endswith(".py") or ".py:" in name:
        if ":" not in name or name.endswith(".py"):
            raise DatafreeError(f"user model {name!r} needs a factory: path/to/file.py:factory")
        module, factory = _load_factory(name)
        try:
            model = factory(num_classes) if num_classes is not None else factory()
        except Exception as e:
            raise DatafreeError(f"calling factory {name} failed: {type(e).__name__}: {e}") from None
        if not isinstance(model, nn.Module):
            raise DatafreeError(f"factory {name} returned {type(model).__name__}, not an nn.Module")
        rec = record_of(model)
        rec.input_spec = input_spec or rec.input_spec or _spec_from_module(module, name)
        if hasattr(module, "HEAD") and not getattr(model, "head_name", None):
            rec.head = str(module.HEAD)
        return _with_source(_with_classes(model, num_classes), name, num_classes)
    factory = MODELS.get(name)
    model = factory(num_classes) if num_classes is not None else factory()
    if input_spec is not None:
        record_of(model).input_spec = input_spec
    return _with_source(_with_classes(model, num_classes), name, num_classes)


def _with_source(model: nn.Module, name: str, num_classes: Optional[int], weights: Optional[str] = None) -> nn.Module:
    record_of(model).source = {"model": name, "weights": str(weights) if weights else None, "num_classes": num_classes}
    return model


def _with_classes(model: nn.Module, num_classes: Optional[int]) -> nn.Module:
    """Keep the spec's class count equal to the head built for `num_classes`."""
    rec = record_of(model)
    if num_classes is not None and rec.input_spec is not None and rec.input_spec.num_classes != num_classes:
        rec.input_spec = dataclasses.replace(rec.input_spec, num_classes=num_classes)
    return model


def _spec_from_module(module: Any, name: str) -> InputSpec:
    need = ("INPUT_SHAPE", "MEAN", "STD", "NUM_CLASSES")
    if not all(hasattr(module, k) for k in need):
        raise DatafreeError(
            f"{name}: input spec unknown; define INPUT_SHAPE, MEAN, STD, NUM_CLASSES in the file, "
            "set model.input_spec, or pass --input-shape/--mean/--std/--num-classes"
        )
    try:
        return InputSpec(tuple(module.INPUT_SHAPE), tuple(module.MEAN), tuple(module.STD), int(module.NUM_CLASSES))
    except (ValueError, TypeError, DatafreeError) as e:
        raise DatafreeError(f"{name}: bad input spec constants: {e}") from None


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a state dict (or a checkpoint dict holding `state_dict`) with weights_only=True."""
    p = Path(path)
    if not p.is_file():
        raise DatafreeError(f"weights file {str(p)!r} not found; check the --weights path")
    obj = load_tensors(p, "is corrupt or not a torch state dict (weights file)",
                       "re-download or re-save it with torch.save(model.state_dict(), path)")
    if isinstance(obj, dict):
        for key in ("state_dict", "model", "model_state_dict"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise DatafreeError(f"weights file {str(p)!r} holds no state dict of tensors; save it with torch.save(model.state_dict(), path)")
    prefix = "module."
    if obj and all(k.startswith(prefix) for k in obj):
        obj = {k[len(prefix):]: v for k, v in obj.items()}
    return obj


def load_weights_(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load weights into `model` in place; mismatched keys or shapes give a one-line error."""
    return load_state_dict_(model, read_state_dict(path), f"weights {str(path)!r}")


def load_state_dict_(model: nn.Module, sd: dict[str, torch.Tensor], what: str) -> nn.Module:
    """Load a state dict in place (a pruned one reshapes the model first); mismatches are a one-line error."""
    if PRUNED_MARKER in sd:  # written by `datafree prune`: fewer channels than the fresh model
        resize_to_state_dict_(model, {k: v for k, v in sd.items() if k != PRUNED_MARKER})
        mark_pruned_(model)
    own = model.state_dict()
    unexpected = [k for k in sd if k not in own]
    shapes = [k for k in sd if k in own and tuple(sd[k].shape) != tuple(own[k].shape)]
    # missing keys as torch sees them after each module's own load hook (a file written before a buffer existed gets
    # that buffer's default from the hook, e.g. QuantLayer.bias_corr); torch cannot load a file that misfits otherwise
    keys = model.load_state_dict(sd, strict=False).missing_keys if not unexpected and not shapes else [k for k in own if k not in sd]
    missing = [k for k in keys if not k.endswith("num_batches_tracked")]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        if shapes:
            k = shapes[0]
            parts.append(f"{len(shapes)} with wrong shape (e.g. {k}: file {tuple(sd[k].shape)} vs model {tuple(own[k].shape)})")
        raise DatafreeError(f"{what} do not fit this model: {'; '.join(parts)}; check MODEL matches the checkpoint")
    return model


def load_model(name: str, weights: Optional[str] = None, num_classes: Optional[int] = None,
               input_spec: Optional[InputSpec] = None) -> nn.Module:
    """Create `name`, load `weights` if given and return it in eval mode."""
    model = create_model(name, num_classes=num_classes, input_spec=input_spec)
    if weights is not None:
        load_weights_(model, weights)
    check_forward(model)
    return _with_source(model, name, num_classes, weights).eval()


def check_forward(model: nn.Module) -> None:
    """Run one forward on zeros of the model's input spec; a failure or wrong output is a one-line error."""
    spec = input_spec_of(model)
    dev = next((t.device for t in list(model.parameters()) + list(model.buffers())), torch.device("cpu"))
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros((2, *spec.shape), device=dev))
    except Exception as e:  # user models may raise anything
        first = first_line(e)
        raise DatafreeError(f"the model fails on its input spec shape {tuple(spec.shape)} ({first}); "
                            "fix INPUT_SHAPE / --input-shape to what the model expects") from None
    finally:
        model.train(was)
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[1] != spec.num_classes:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise DatafreeError(f"the model returns {shape} for a batch of 2, expected (2, {spec.num_classes}) logits; "
                            "fix NUM_CLASSES / --num-classes or make forward return logits")


def fingerprint(model: nn.Module) -> str:
    """Short sha256 of a model's state dict (names, shapes and values)."""
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(str(tuple(v.shape)).encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def input_spec_of(model: nn.Module) -> InputSpec:
    """The model's InputSpec, or a clear error if it has none."""
    spec = record_of(model).input_spec
    if spec is None:
        raise DatafreeError("model has no input_spec; set model.input_spec = datafree.InputSpec(...)")
    return spec


def head_of(model: nn.Module) -> str:
    """Name of the classifier layer: declared by `model.head_name` (zoo models; `HEAD = "fc"` in a user file), else the
    model's only nn.Linear."""
    name = getattr(model, "head_name", None) or record_of(model).head
    mods = dict(model.named_modules())
    if name:
        if name not in mods:
            raise DatafreeError(f"the model declares head_name {name!r} but has no such layer; "
                                "valid names come from model.named_modules()")
        return name
    linears = [n for n, m in mods.items() if isinstance(m, nn.Linear)]
    if len(linears) == 1:
        return linears[0]
    raise DatafreeError(f"cannot tell the classifier layer of {type(model).__name__} ({len(linears)} nn.Linear layers); "
                        "declare it: HEAD = 'fc' in the model file or model.head_name = 'fc'")


def check_finite(model: nn.Module, where: str) -> nn.Module:
    """Refuse weights with NaN or infinite values (they would be quantized, distilled and saved as if fine)."""
    bad = [(k, int((~torch.isfinite(v)).sum())) for k, v in model.state_dict().items()
           if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        k, n = bad[0]
        more = f" and {len(bad) - 1} more tensors" if len(bad) > 1 else ""
        raise DatafreeError(f"{where} holds NaN or infinite values ({n} in {k}{more}); the model is broken — use the "
                            "weights from before the training run that diverged")
    return model
