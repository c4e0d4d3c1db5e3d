"""A small name -> factory registry filled by a decorator."""
from __future__ import annotations

import difflib
from typing import Callable, Generic, TypeVar

from .errors import DatafreeError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to objects; lookups of unknown names fail with the list of valid ones."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator that registers its target under `name`."""

        def deco(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = obj
            return obj

        return deco

    def get(self, name: str) -> T:
        """Return the entry registered as `name` or raise a DatafreeError listing valid names."""
        try:
            return self._items[name]
        except KeyError:
            close = difflib.get_close_matches(name, self._items, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise DatafreeError(
                f"unknown {self.kind} {name!r}.{hint} Valid: {', '.join(sorted(self._items))}"
            ) from None

    def names(self) -> list[str]:
        """All registered names, sorted."""
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items
