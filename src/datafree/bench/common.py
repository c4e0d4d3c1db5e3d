"""Shared helpers for benchmarks: result metadata (commit, machine), resumable row files."""
from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any, Callable

import torch


def git_commit() -> str:
    """Current commit (with -dirty if the tree has changes), or 'unknown'."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(), "platform": platform.platform()}


class RowStore:
    """Rows kept in a JSON file as they are produced, so an interrupted benchmark resumes."""

    def __init__(self, path: str | os.PathLike, meta: dict[str, Any]) -> None:
        self.path = Path(path)
        self.partial = self.path.with_suffix(".partial.json")
        self.meta = meta
        self.rows: list[dict[str, Any]] = []
        if self.partial.is_file():
            self.rows = json.loads(self.partial.read_text())["rows"]

    def get(self, key: dict[str, Any]) -> dict[str, Any] | None:
        """The stored row whose fields include `key`, if any."""
        for r in self.rows:
            if all(r.get(k) == v for k, v in key.items()):
                return r
        return None

    def run(self, key: dict[str, Any], fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """Return the stored row for `key` or compute, store and return it."""
        r = self.get(key)
        if r is None:
            t0 = time.time()
            r = dict(key, **fn())
            r.setdefault("seconds", round(time.time() - t0, 2))
            self.rows.append(r)
            self._write(self.partial)
        return r

    def _write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"meta": self.meta, "rows": self.rows}, indent=1))
        os.replace(tmp, path)

    def finish(self, **meta: Any) -> None:
        """Write the final file and drop the partial one."""
        self.meta.update(meta)
        self._write(self.path)
        if self.partial.exists():
            self.partial.unlink()
