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


def _kind(t: Types) -> str:
    ts = t if isinstance(t, tuple) else (t,)
    return " or ".join(dict.fromkeys(_NAMES.get(x, x.__name__) for x in ts))


def _got(v: Any) -> str:
    return "null" if v is None else type(v).__name__


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

    def get(self, obj: dict, key: str, types: Types, field: str = "", required: bool = True, default: Any = None) -> Any:
        """obj[key], which must have one of `types` (bool is never an int here; an int is a float)."""
        name = f"{field}.{key}" if field else key
        if key not in obj:
            if required:
                self.fail(name, "is missing")
            return default
        v = obj[key]
        ts = types if isinstance(types, tuple) else (types,)
        ok = isinstance(v, ts) and not (isinstance(v, bool) and bool not in ts)
        if not ok and float in ts and isinstance(v, int) and not isinstance(v, bool):
            ok = True
        if not ok:
            self.fail(name, f"must be {_kind(types)}, got {_got(v)}")
        if isinstance(v, float) and not math.isfinite(v):
            self.fail(name, f"is {v}, not a finite number")
        return v

    def integer(self, obj: dict, key: str, field: str = "", lo: Optional[int] = None, hi: Optional[int] = None,
                required: bool = True, nullable: bool = False) -> Optional[int]:
        """An int field within [lo, hi]."""
        v = self.get(obj, key, (int, type(None)) if nullable else int, field, required)
        name = f"{field}.{key}" if field else key
        if v is not None and ((lo is not None and v < lo) or (hi is not None and v > hi)):
            rng = f"in [{lo}, {hi}]" if lo is not None and hi is not None else (f">= {lo}" if lo is not None else f"<= {hi}")
            self.fail(name, f"must be {rng}, got {v}")
        return v

    def str_list(self, obj: dict, key: str, field: str = "", required: bool = True) -> Optional[list]:
        """A list of strings."""
        v = self.get(obj, key, list, field, required)
        for i, s in enumerate(v or []):
            if not isinstance(s, str):
                self.fail(f"{field}.{key}[{i}]" if field else f"{key}[{i}]", f"must be a string, got {_got(s)}")
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
        shape = self.get(d, "shape", (list, tuple), name)
        for i, s in enumerate(shape):
            if isinstance(s, bool) or not isinstance(s, int):
                self.fail(f"{name}.shape[{i}]", f"must be an integer, got {_got(s)}")
        for k in ("mean", "std"):
            for i, s in enumerate(self.get(d, k, (list, tuple), name)):
                if isinstance(s, bool) or not isinstance(s, (int, float)):
                    self.fail(f"{name}.{k}[{i}]", f"must be a number, got {_got(s)}")
        self.integer(d, "num_classes", name, lo=1)
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
    import typing

    if hint is None or hint is Any:
        return
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Union or str(origin) == "types.UnionType" or type(hint).__name__ == "UnionType":
        if v is None and type(None) in args:
            return
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return _check_type(s, v, inner[0], field)
        return
    if origin in (tuple, list):
        if not isinstance(v, (list, tuple)):
            s.fail(field, f"must be a list, got {_got(v)}")
        elem = args[0] if args else None
        for i, x in enumerate(v):
            _check_type(s, x, elem, f"{field}[{i}]")
        return
    if hint is bool:
        if not isinstance(v, bool):
            s.fail(field, f"must be true/false, got {_got(v)}")
    elif hint is int:
        if isinstance(v, bool) or not isinstance(v, int):
            s.fail(field, f"must be an integer, got {_got(v)}")
    elif hint is float:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            s.fail(field, f"must be a number, got {_got(v)}")
        if not math.isfinite(float(v)):
            s.fail(field, f"is {v}, not a finite number")
    elif hint is str:
        if not isinstance(v, str):
            s.fail(field, f"must be a string, got {_got(v)}")


def submodule(s: Schema, model: torch.nn.Module, name: Any, field: str) -> torch.nn.Module:
    """model.get_submodule(name), or the error that the file names a layer the model does not have."""
    if not isinstance(name, str):
        s.fail(field, f"must be a layer name (a string), got {_got(name)}")
    try:
        return model.get_submodule(name)
    except AttributeError:
        s.fail(field, f"names layer {name!r}, which {type(model).__name__} does not have",
               "the file belongs to another model; give the MODEL it was made from, or re-create it")
