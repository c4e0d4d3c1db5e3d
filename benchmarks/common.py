"""Shared helpers for benchmarks: result metadata (commit, machine), resumable row files."""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
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
    """Rows written to the result file after each one (meta.complete false until `finish`); a rerun with the
    same config resumes from the rows already there."""

    def __init__(self, path: str | os.PathLike, meta: dict[str, Any], selection: tuple[str, ...] = ()) -> None:
        self.path = Path(path)
        self.meta = dict(meta, complete=False)
        self.rows: list[dict[str, Any]] = []
        self.old_meta: dict[str, Any] = {}  # the meta of the run being resumed, if any
        if self.path.is_file():  # resume when the protocol matches; `selection` keys only choose which rows run
            old = json.loads(self.path.read_text())

            def proto(c: dict) -> dict:  # an option added later with a None default does not change the protocol
                return {k: v for k, v in (c or {}).items() if k not in selection and v is not None}

            a, b = proto(old.get("meta", {}).get("config")), proto(meta.get("config"))
            if a != b:  # never drop finished rows silently: the user chooses another --out or deletes the file
                diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
                raise SystemExit(f"{self.path} holds rows of a different protocol (differs in: {', '.join(diff)}); "
                                 f"pass another --out, or delete the file to start over")
            self.rows, self.old_meta = old["rows"], old.get("meta", {})

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
            self._write()
        return r

    def _write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"meta": self.meta, "rows": self.rows}, indent=1))
        os.replace(tmp, self.path)

    def finish(self, complete: bool = True, **meta: Any) -> None:
        """Write the final meta; `complete=False` when only a subset of the protocol was run."""
        self.meta.update(meta, complete=complete)
        self._write()


def command_line(module: str, args: Any, skip: tuple[str, ...] = ("out", "cache"),
                 parser: argparse.ArgumentParser | None = None) -> str:
    """The command that reproduces a benchmark run: `python -m module --opt value ...` from parsed args; with the
    `parser`, a `--no-x` switch turned off and an empty `nargs="*"` list are written too (bare `--x`)."""
    actions = {a.dest: a for a in parser._actions} if parser is not None else {}
    parts = []
    for k, v in vars(args).items():
        act = actions.get(k)
        if k in skip or v is None:
            continue
        flag = "--" + k.replace("_", "-")
        if isinstance(v, (list, tuple)) and not v:  # empty: given bare where the option takes none, else not given
            parts.append(flag if act is not None and act.nargs == "*" and act.default else "")
        elif isinstance(v, bool):
            parts.append(flag if v else ("--no-" + k.replace("_", "-")
                                         if isinstance(act, argparse.BooleanOptionalAction) else ""))
        else:
            parts.append(f"{flag} {' '.join(map(str, v)) if isinstance(v, (list, tuple)) else v}")
    return f"python -m {module} " + " ".join(x for x in parts if x)

CHECKPOINTS = {"resnet20": "resnet20-12fca82f.th", "resnet32": "resnet32-d509ac18.th",
               "resnet44": "resnet44-014dd654.th", "resnet56": "resnet56-4bfd9763.th"}


def data_root() -> str:
    """Benchmarks read the shared data from $DATAFREE_DATA (default ../shared/data)."""
    return os.environ.get("DATAFREE_DATA", "../shared/data")


def pretrained(name: str):
    """A shared pretrained CIFAR-10 ResNet."""
    from datafree.models import load_model

    return load_model(name, str(Path(data_root()) / "models" / CHECKPOINTS[name]))


def row_label(r: dict[str, Any]) -> str:
    """A result row's method, with its DeepInversion α_f when the row records one."""
    return r["method"] + (f" (α_f {r['bn_weight']:g})" if "bn_weight" in r else "")


def di_bn_weight(given: float | None) -> float:
    """The DeepInversion α_f a run used: the one given, else the library default."""
    from datafree.synth import make_config

    return given if given is not None else make_config("deepinversion").bn_weight


def cached_set_dir(name: str, method: str, num: int, iterations: int, seed: int, cache: str = "benchmarks/cache",
                   **overrides) -> Path:
    """Where `cached_set` stores the set with these settings (non-default overrides become name suffixes)."""
    extra = "".join(f"_{k}{'' if v is True else v}" for k, v in sorted(overrides.items()) if v not in (None, False))
    return Path(cache) / f"{name}_{method}_n{num}_it{iterations}_s{seed}{extra}"


def cached_set(model, name: str, method: str, num: int, iterations: int, seed: int, cache: str = "benchmarks/cache",
               **overrides):
    """Synthesize (or reuse, or resume) a stored set keyed by model/method/num/iterations/seed (+ overrides); returns (data, manifest)."""
    from datafree.data.synthetic import read_manifest
    from datafree.synth import make_config, synthesize

    out = cached_set_dir(name, method, num, iterations, seed, cache, **overrides)
    data = synthesize(model, method, make_config(method, num=num, iterations=iterations, seed=seed, **overrides), out=str(out))
    return data, read_manifest(out)


def chunked_set(teacher, name: str, method: str, num: int, chunk: int, iterations: int, seed: int, cache: str, **kw):
    """`num` samples of `teacher` (cache key `name`) as stored chunks of `chunk` (seeds seed, seed+1, ...), so a longer run reuses a shorter one's
    sets; returns (data, synthesis seconds recorded for all chunks)."""
    from datafree.data import concat_data

    parts, seconds = [], 0.0
    for i in range(math.ceil(num / chunk)):
        d, man = cached_set(teacher, name, method, min(chunk, num - i * chunk), iterations, seed + i, cache, **kw)
        if float(man.get("seconds") or 0.0) <= 0:  # stored before shard times were recorded: the budget would be wrong
            raise SystemExit(f"{method} set in {cache} has no recorded synthesis time; delete it to re-synthesize")
        parts.append(d)
        seconds += float(man["seconds"])
    return concat_data(parts, f"{method} x{num}"), seconds


def cli_json(args: list[str]) -> dict:
    """Run `datafree ARGS --json --no-progress` in a fresh process on the benchmark data root, as a user would; returns
    its --json record (a failure stops the benchmark with the command's last stderr)."""
    r = subprocess.run([sys.executable, "-m", "datafree", *args, "--json", "--no-progress", "--data-root", data_root()],
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"datafree {' '.join(args)} failed: {r.stderr.strip()[-500:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])
