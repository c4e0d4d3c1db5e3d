"""User-facing errors: one line naming the problem and the fix."""
from __future__ import annotations


class DatafreeError(Exception):
    """An error caused by user input; the CLI prints its message as one line and exits non-zero."""
