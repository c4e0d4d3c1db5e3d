"""Base for typed, validated, JSON round-trippable configs."""
from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, TypeVar

from .errors import DatafreeError

C = TypeVar("C", bound="Config")


VERSION_KEY = "config_version"


def opt(default: Any, help: str, flag: str | None = None, **meta: Any) -> Any:
    """A config field with its help text (and the CLI flag it is known by, when that is not --field-name)."""
    return dataclasses.field(default=default, metadata={"help": help, "flag": flag, **meta})


def field_help(cls: type, name: str) -> str:
    """The help text a config field declares ('' if none)."""
    for f in dataclasses.fields(cls):
        if f.name == name:
            return str(f.metadata.get("help", ""))
    return ""


@dataclasses.dataclass
class Config:
    """Dataclass config with dict round-trip; subclasses validate in `validate`. `version` changes when a field's meaning
    changes; `migrate` turns an older dict into the current one."""

    version: ClassVar[int] = 1

    def __post_init__(self) -> None:
        self.validate()

    @classmethod
    def migrate(cls, d: dict[str, Any], from_version: int) -> dict[str, Any]:
        """Upgrade a dict written at `from_version` (override when a version bumps)."""
        return d

    def validate(self) -> None:
        """Raise DatafreeError on an invalid value (override)."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of all fields, with the config version."""
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

    def replace(self: C, **kw: Any) -> C:
        """Copy with some fields changed (validated)."""
        return dataclasses.replace(self, **kw)


def check(cond: bool, msg: str, option: str | None = None) -> None:
    """Raise DatafreeError(msg) naming `option` unless cond."""
    if not cond:
        raise DatafreeError(msg, option)
