"""Schemas for the files datafree reads back: each check names the file and the field, so a damaged or crafted file is
one line (`<file>: field <f> ...; <fix>`) and never a KeyError, AttributeError or TypeError deep in a rebuild."""
from __future__ import annotations

import math
from typing import Any, NoReturn, Optional, Union

import torch

from .errors import DatafreeError

Types = Union[type, tuple[type, ...]]
_NAMES = {bool: "true/false", int: "an integer", float: "a number", str: "a string", list: "a list", dict: "a mapping",
          tuple: "a list", type(None): "null", torch.Tensor: "a tensor"}
# what loading a stored state into an object it does not fit raises (optimizer, RNG, module, synthesizer state)
MISFIT_ERRORS = (KeyError, TypeError, ValueError, RuntimeError, IndexError, AttributeError)


def _kind(t: Types) -> str:
    ts = t if isinstance(t, tuple) else (t,)
    return " or ".join(dict.fromkeys(_NAMES.get(x, x.__name__) for x in ts))


def _got(v: Any) -> str:
    return "null" if v is None else type(v).__name__


def _is(v: Any, types: Types) -> bool:
    """isinstance, except that a bool is never an int and an int is a float."""
    ts = types if isinstance(types, tuple) else (types,)
    if isinstance(v, bool):
        return bool in ts
    return isinstance(v, ts) or (float in ts and isinstance(v, int))


class Schema:
    """Checks on one file's object: every failure is a DatafreeError naming the file and the dotted field."""

    def __init__(self, where: str, fix: str) -> None:
        self.where, self.fix = where, fix

    def fail(self, field: str, problem: str, fix: Optional[str] = None) -> NoReturn:
        """Raise the one-line error for `field`."""
        raise DatafreeError(f"{self.where}: field {field!r} {problem}; {fix or self.fix}")

    def mapping(self, obj: Any, field: str) -> dict:
        """`obj` itself must be a dict (the file's top level or a nested record)."""
        if not isinstance(obj, dict):
            self.fail(field, f"must be a mapping, got {_got(obj)}")
        return obj

    def value(self, v: Any, types: Types, name: str) -> Any:
        """`v` (the field `name`) must have one of `types`, and be finite if it is a float."""
        if not _is(v, types):
            self.fail(name, f"must be {_kind(types)}, got {_got(v)}")
        if isinstance(v, float) and not math.isfinite(v):
            self.fail(name, f"is {v}, not a finite number")
        return v

    def get(self, obj: dict, key: str, types: Types, field: str = "", required: bool = True) -> Any:
        """obj[key], which must have one of `types` (None when absent and not required)."""
        name = f"{field}.{key}" if field else key
        if key not in obj:
            if required:
                self.fail(name, "is missing")
            return None
        return self.value(obj[key], types, name)

    def _in_range(self, v: Any, name: str, lo: Optional[float], hi: Optional[float]) -> None:
        if v is not None and ((lo is not None and v < lo) or (hi is not None and v > hi)):
            rng = f"in [{lo}, {hi}]" if lo is not None and hi is not None else (f">= {lo}" if lo is not None else f"<= {hi}")
            self.fail(name, f"must be {rng}, got {v}")

    def number(self, obj: dict, key: str, field: str = "", lo: Optional[float] = None, hi: Optional[float] = None,
               required: bool = True, nullable: bool = False, kind: type = int) -> Any:
        """An int (or, with kind=float, a finite number) field within [lo, hi]."""
        v = self.get(obj, key, (kind, type(None)) if nullable else kind, field, required)
        self._in_range(v, f"{field}.{key}" if field else key, lo, hi)
        return v

    def items(self, obj: dict, key: str, types: Types, field: str = "", required: bool = True,
              lo: Optional[float] = None, container: Types = list) -> Optional[list]:
        """A list field whose every element has one of `types` (and is >= lo)."""
        v = self.get(obj, key, container, field, required)
        name = f"{field}.{key}" if field else key
        for i, x in enumerate(v or []):
            self.value(x, types, f"{name}[{i}]")
            self._in_range(x, f"{name}[{i}]", lo, None)
        return v

    def tensors(self, obj: Any, field: str, finite: bool = True) -> dict[str, torch.Tensor]:
        """A state dict: string keys, tensor values, floating tensors finite."""
        sd = self.mapping(obj, field)
        for k, v in sd.items():
            if not isinstance(k, str):
                self.fail(field, f"has a non-string key {k!r}")
            if not isinstance(v, torch.Tensor):
                self.fail(f"{field}.{k}", f"must be a tensor, got {_got(v)}")
            if finite and v.is_floating_point() and v.numel() and not bool(torch.isfinite(v).all()):
                n = int((~torch.isfinite(v)).sum())
                self.fail(f"{field}.{k}", f"holds {n} NaN or infinite values")
        return sd

    def spec(self, obj: dict, cls: Any, key: str = "input_spec", field: str = "") -> Any:
        """An input spec dict (shape C,H,W of positive ints, mean/std per channel, num_classes) built as `cls`."""
        name = f"{field}.{key}" if field else key
        d = self.get(obj, key, dict, field)
        self.items(d, "shape", int, name, container=(list, tuple))
        for k in ("mean", "std"):
            self.items(d, k, float, name, container=(list, tuple))
        self.number(d, "num_classes", name, lo=1)
        try:
            return cls.from_dict(d)
        except DatafreeError as e:
            self.fail(name, f"is invalid ({e})")

    def config(self, cls: type, obj: Any, field: str) -> Any:
        """A Config dict that `cls.from_dict` accepts (known keys, field types, its own validation)."""
        d = self.mapping(obj, field)
        import dataclasses
        import typing

        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.name in d:
                _check_type(self, d[f.name], hints.get(f.name), f"{field}.{f.name}")
        try:
            return cls.from_dict(d)
        except DatafreeError as e:
            self.fail(field, f"is invalid ({e})")
        except (TypeError, ValueError, KeyError) as e:
            self.fail(field, f"is invalid ({type(e).__name__}: {e})")


def _check_type(s: Schema, v: Any, hint: Any, field: str) -> None:
    """A JSON value against a simple annotation: bool, int, float, str, Optional[...], tuple/list of those."""
    import dataclasses
    import types
    import typing

    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Union, types.UnionType):
        if v is None and type(None) in args:
            return
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            _check_type(s, v, inner[0], field)
    elif origin in (tuple, list):
        s.value(v, (list, tuple), field)
        for i, x in enumerate(v):
            _check_type(s, x, args[0] if args else None, f"{field}[{i}]")
    elif hint in (bool, int, float, str):
        s.value(v, hint, field)
    elif isinstance(hint, type) and dataclasses.is_dataclass(hint):  # a nested config: its fields, one by one
        d = s.mapping(v, field)
        hints = typing.get_type_hints(hint)
        for f in dataclasses.fields(hint):
            if f.name in d:
                _check_type(s, d[f.name], hints.get(f.name), f"{field}.{f.name}")


def submodule(s: Schema, model: torch.nn.Module, name: Any, field: str) -> torch.nn.Module:
    """model.get_submodule(name), or the error that the file names a layer the model does not have."""
    if not isinstance(name, str):
        s.fail(field, f"must be a layer name (a string), got {_got(name)}")
    try:
        return model.get_submodule(name)
    except AttributeError:
        s.fail(field, f"names layer {name!r}, which {type(model).__name__} does not have",
               "the file belongs to another model; give the MODEL it was made from, or re-create it")
