"""Base for typed, validated, JSON round-trippable configs."""
from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

from .errors import DatafreeError

C = TypeVar("C", bound="Config")


@dataclasses.dataclass
class Config:
    """Dataclass config with dict round-trip; subclasses validate in `validate`."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise DatafreeError on an invalid value (override)."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of all fields."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls: type[C], d: dict[str, Any]) -> C:
        """Build from a dict, rejecting unknown keys."""
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
