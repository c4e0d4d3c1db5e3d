"""User-facing errors: one line naming the problem and the fix."""
from __future__ import annotations


class DatafreeError(Exception):
    """An error caused by user input; the CLI prints its message as one line and exits non-zero.

    `option` names the library option at fault (`lr`); the CLI renders it as its flag (`--kd-lr`)."""

    def __init__(self, message: str, option: str | None = None) -> None:
        super().__init__(message)
        self.option = option


def first_line(e: BaseException, limit: int = 160) -> str:
    """The first line of an exception's message (or its type name), truncated: for one-line error reports."""
    text = str(e).strip()
    return text.splitlines()[0][:limit] if text else type(e).__name__
