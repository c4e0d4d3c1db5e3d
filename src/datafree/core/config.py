"""Base for typed, validated, JSON round-trippable configs: fields declare their help, flag, choices and range, and
a config checks those declarations itself; nested configs (a field that is itself a Config) round-trip as dicts."""
from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar, TypeVar

from .errors import DatafreeError

C = TypeVar("C", bound="Config")


VERSION_KEY = "config_version"


def opt(default: Any, help: str, flag: str | None = None, **meta: Any) -> Any:
    """A config field with its help text (and the CLI flag it is known by, when that is not --field-name). Declarations
    the config checks itself: `choices`, `lo`/`hi` (inclusive; `lo_open`/`hi_open` make them strict) and `label` (the
    name errors use, when it is not the field's)."""
    return dataclasses.field(default=default, metadata={"help": help, "flag": flag, **meta})


def nested(cls: type, help: str) -> Any:
    """A field holding another config (stored as a dict inside this one's)."""
    return dataclasses.field(default_factory=cls, metadata={"help": help, "nested": cls})


def field_help(cls: type, name: str) -> str:
    """The help text a config field declares ('' if none)."""
    for f in dataclasses.fields(cls):
        if f.name == name:
            return str(f.metadata.get("help", ""))
    return ""


def _choices_text(choices: tuple) -> str:
    c = [str(x) for x in choices]
    return c[0] if len(c) == 1 else ", ".join(c[:-1]) + " or " + c[-1]


def _declared(cls: type, name: str) -> dict[str, Any]:
    """A field's declarations; a subclass that only changes the default keeps its base class's checks."""
    for k in cls.__mro__:
        f = getattr(k, "__dataclass_fields__", {}).get(name)
        if f is not None and any(key in f.metadata for key in ("choices", "lo", "hi")):
            return dict(f.metadata)
    return {}


def check_declared(cfg: Any) -> None:
    """Check every field's declared choices and range (the error names the field's label as its option)."""
    for f in dataclasses.fields(cfg):
        m, v = _declared(type(cfg), f.name), getattr(cfg, f.name)
        name = m.get("label") or f.name
        if m.get("choices") is not None:
            check(v in m["choices"], f"{name} must be {_choices_text(tuple(m['choices']))}, got {v!r}", name)
        if (m.get("lo") is not None or m.get("hi") is not None) and isinstance(v, float):
            check(math.isfinite(v), f"{name} must be a finite number, got {v}", name)
        if m.get("lo") is not None:
            ok = v > m["lo"] if m.get("lo_open") else v >= m["lo"]
            what = "a positive number" if m["lo"] == 0 and m.get("lo_open") else \
                f"{'>' if m.get('lo_open') else '>='} {m['lo']}"
            check(ok, f"{name} must be {what}, got {v}", name)
        if m.get("hi") is not None:
            ok = v < m["hi"] if m.get("hi_open") else v <= m["hi"]
            check(ok, f"{name} must be {'<' if m.get('hi_open') else '<='} {m['hi']}, got {v}", name)


@dataclasses.dataclass
class Config:
    """Dataclass config with dict round-trip; fields declare their checks (`opt`), subclasses add cross-field rules in
    `validate`. `version` changes when a field's meaning or place changes; `migrate` turns an older dict into the
    current one."""

    version: ClassVar[int] = 1

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            cls = f.metadata.get("nested")
            if cls is not None and isinstance(getattr(self, f.name), dict):
                setattr(self, f.name, cls.from_dict(getattr(self, f.name)))
        self.verify()

    def verify(self) -> None:
        """Check every field against its declaration, then the cross-field rules of `validate` (again after a change)."""
        check_declared(self)
        self.validate()

    @classmethod
    def migrate(cls, d: dict[str, Any], from_version: int) -> dict[str, Any]:
        """Upgrade a dict written at `from_version` (override when a version bumps)."""
        return d

    def validate(self) -> None:
        """Raise DatafreeError on an invalid combination of values (override; single fields declare their checks)."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of all fields (nested configs as dicts), with the config version."""
        return {**dataclasses.asdict(self), VERSION_KEY: self.version}

    @classmethod
    def from_dict(cls: type[C], d: dict[str, Any]) -> C:
        """Build from a dict (any version up to the current one; dicts without a version are version 1), rejecting unknown keys."""
        d = dict(d)
        v = int(d.pop(VERSION_KEY, 1))
        if v > cls.version:
            raise DatafreeError(f"{cls.__name__} version {v} was written by a newer datafree (this one reads up to "
                                f"{cls.version}); upgrade datafree")
        if v < cls.version:
            d = cls.migrate(d, v)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise DatafreeError(f"unknown {cls.__name__} option(s) {sorted(unknown)}; valid: {sorted(names)}")
        return cls(**d)

    @classmethod
    def flat_fields(cls) -> dict[str, tuple[str | None, Any]]:
        """Every field by its flat name (a nested config's fields by their label): (the nested field or None, field)."""
        out: dict[str, tuple[str | None, Any]] = {}
        for f in dataclasses.fields(cls):
            sub = f.metadata.get("nested")
            if sub is None:
                out[f.name] = (None, f)
            else:
                out.update({g.metadata.get("label") or g.name: (f.name, g) for g in dataclasses.fields(sub)})
        return out

    @classmethod
    def group_flat(cls, kw: dict[str, Any]) -> dict[str, Any]:
        """Flat names (as `flat_fields` lists them) grouped into this config's dict layout."""
        flat = cls.flat_fields()
        out: dict[str, Any] = {}
        for k, v in kw.items():
            if k not in flat:
                raise DatafreeError(f"unknown {cls.__name__} option {k!r}; valid: {', '.join(sorted(flat))}")
            parent, f = flat[k]
            if parent is None:
                out[k] = v
            else:
                out.setdefault(parent, {})[f.name] = v
        return out

    @classmethod
    def from_flat(cls: type[C], **kw: Any) -> C:
        """Build from flat names: nested fields by their labels (e.g. `QuantConfig.from_flat(w_bits=4, reconstruct="brecq")`)."""
        return cls(**cls.group_flat(kw))

    def flat_values(self) -> dict[str, Any]:
        """Every field's value by its flat name."""
        return {k: getattr(getattr(self, p), f.name) if p else getattr(self, k)
                for k, (p, f) in self.flat_fields().items()}

    def replace(self: C, **kw: Any) -> C:
        """Copy with some fields changed (validated); nested configs' fields may be given by their flat labels."""
        grouped = self.group_flat(kw)
        for k, v in grouped.items():
            if isinstance(v, dict) and dataclasses.is_dataclass(getattr(self, k)):
                grouped[k] = dataclasses.replace(getattr(self, k), **v)
        return dataclasses.replace(self, **grouped)


def check(cond: bool, msg: str, option: str | None = None) -> None:
    """Raise DatafreeError(msg) naming `option` unless cond."""
    if not cond:
        raise DatafreeError(msg, option)
