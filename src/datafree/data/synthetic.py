"""SyntheticSet: a directory of float shards (inputs, labels, teacher logits) plus manifest.json."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from ..core.errors import DatafreeError
from ..core.schema import Schema
from ..core.utils import atomic_write, remove_stale_temps
from ..models.spec import InputSpec
from .base import TensorData

FORMAT = "datafree-synthetic-v1"
_SHARD = re.compile(r"shard_(\d{5})\.npz$")


class SyntheticSetWriter:
    """Writes shards atomically; reopening a directory with the same identity resumes it. A follower (another rank of
    a torchrun job) writes shards only: the lead writer owns the manifest and merges the followers' stats at the end."""

    def __init__(self, out: str | os.PathLike, manifest: dict[str, Any], overwrite: bool = False,
                 config_defaults: Optional[dict[str, Any]] = None, follower: bool = False) -> None:
        self.dir = Path(out)
        self.manifest = dict(manifest, format=FORMAT, complete=False)
        self.lead = not follower
        if follower:
            return
        mpath = self.dir / "manifest.json"
        if mpath.exists() and not overwrite:
            old = read_manifest(self.dir)
            if config_defaults:  # options added after the set was written count as their defaults
                old["config"] = {**config_defaults, **old.get("config", {})}
            keys = ("method", "config", "seed", "teacher_fingerprint", "num", "shard_size")
            diff = [k for k in keys if old.get(k) != self.manifest.get(k)]
            if "config" in diff:  # name the options, e.g. "config (bn_weight 10.0 -> 1.0)"
                oc, nc = old.get("config") or {}, self.manifest.get("config") or {}
                opts = [f"{k} {oc.get(k)} -> {nc.get(k)}" for k in sorted(set(oc) | set(nc)) if oc.get(k) != nc.get(k)]
                diff[diff.index("config")] = f"config ({', '.join(opts)})"
            if diff:
                raise DatafreeError(
                    f"{self.dir} already holds a different synthetic set (differs in {', '.join(diff)}); "
                    "choose another --out or pass --overwrite")
            on_disk = {str(i) for i in self.done_shards()}  # resuming keeps the stats (and times) of finished shards
            kept = {k: v for k, v in old.get("shard_stats", {}).items() if k in on_disk}
            if kept:
                self.manifest["shard_stats"] = kept
        elif self.dir.exists() and any(self.dir.iterdir()) and not overwrite:
            raise DatafreeError(f"{self.dir} exists and is not a synthetic set; choose another --out or pass --overwrite")
        if overwrite and self.dir.exists():
            for p in self.dir.iterdir():
                if _SHARD.match(p.name) or p.name in ("manifest.json", "grid.png"):
                    p.unlink()
        self.dir.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(self.dir)  # a run killed mid-write left them; no other writer has started yet
        self._write_manifest()

    def _write_manifest(self) -> None:
        if not self.lead:
            return
        data = json.dumps(self.manifest, indent=2, sort_keys=True).encode()
        atomic_write(self.dir / "manifest.json", lambda f: f.write(data))

    def done_shards(self) -> set[int]:
        """Indices of shards already on disk."""
        return {int(m.group(1)) for p in self.dir.iterdir() if (m := _SHARD.match(p.name))}

    def write_shard(self, index: int, x: torch.Tensor, y: torch.Tensor, logits: torch.Tensor, extra: Optional[dict] = None) -> None:
        """Store one shard atomically."""
        arrays = {"x": x.detach().cpu().float().numpy(), "y": y.detach().cpu().long().numpy(),
                  "logits": logits.detach().cpu().float().numpy()}
        atomic_write(self.dir / f"shard_{index:05d}.npz", lambda f: np.savez(f, **arrays))
        if extra:
            self.manifest.setdefault("shard_stats", {})[str(index)] = extra
            self._write_manifest()

    def merge_stats(self, stats: dict[str, dict]) -> None:
        """Add shard stats recorded by followers."""
        if stats:
            self.manifest.setdefault("shard_stats", {}).update(stats)

    def finish(self, **info: Any) -> None:
        """Mark the set complete and record final info (e.g. wall time)."""
        self.manifest.update(info, complete=True)
        self._write_manifest()


def _shard_index(name: str) -> int:
    """The index in a shard's file name (a name `_SHARD` matched)."""
    m = _SHARD.match(name)
    assert m is not None, name
    return int(m.group(1))


def read_manifest(path: str | os.PathLike) -> dict[str, Any]:
    """Read and check a SyntheticSet's manifest."""
    d = Path(path)
    m = d / "manifest.json"
    if not d.is_dir():
        raise DatafreeError(f"synthetic set {str(d)!r} not found; create it with `datafree synthesize ... --out {d}`")
    if not m.is_file():
        raise DatafreeError(f"{str(d)!r} has no manifest.json, so it is not a synthetic set; create one with `datafree synthesize`")
    try:
        man = json.loads(m.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DatafreeError(f"{m} is corrupt ({e}); re-run `datafree synthesize` with the same --out to rebuild it") from None
    if not isinstance(man, dict):
        raise DatafreeError(f"{m} is not a JSON object, so {str(d)!r} is not a synthetic set; re-run `datafree "
                            "synthesize` with --overwrite to rebuild it")
    if man.get("format") != FORMAT:
        raise DatafreeError(f"{m}: field 'format' is {man.get('format')!r}, so this is not a {FORMAT} manifest; "
                            "re-create the set with `datafree synthesize`")
    s = Schema(str(m), "re-run the same `datafree synthesize` command with --overwrite to rebuild the set")
    s.get(man, "complete", bool)
    s.get(man, "method", str)
    s.number(man, "num", lo=1)
    s.number(man, "shard_size", lo=1)
    s.spec(man, InputSpec)
    s.number(man, "seed", required=False)
    s.get(man, "config", dict, required=False)
    s.get(man, "teacher_fingerprint", (str, type(None)), required=False)
    s.get(man, "library_version", (str, type(None)), required=False)
    for k, v in (s.get(man, "shard_stats", dict, required=False) or {}).items():
        if not k.isdigit() or not isinstance(v, dict):
            s.fail(f"shard_stats.{k}", "must map a shard number to a record")
    return man


def _check_shard(p: Path, x: np.ndarray, y: np.ndarray, logits: np.ndarray, spec: InputSpec, n: int) -> None:
    """One shard's arrays against the manifest: n samples of the model's input shape, labels in range, finite values."""
    s = Schema(str(p), "delete it and re-run the same `datafree synthesize` command")
    k = spec.num_classes
    for name, a, shape in (("x", x, (n, *spec.shape)), ("y", y, (n,)), ("logits", logits, (n, k))):
        if tuple(a.shape) != shape:
            s.fail(name, f"has shape {tuple(a.shape)}, expected {shape} (the manifest's input spec and shard size)")
    if x.dtype.kind != "f" or logits.dtype.kind != "f":
        s.fail("x" if x.dtype.kind != "f" else "logits", "must hold floats")
    if y.dtype.kind not in "iu":
        s.fail("y", f"must hold integer labels, got {y.dtype}")
    if y.size and (int(y.min()) < 0 or int(y.max()) >= k):
        s.fail("y", f"holds labels outside 0..{k - 1}")
    for name, a in (("x", x), ("logits", logits)):
        if not np.isfinite(a).all():
            s.fail(name, f"holds {int((~np.isfinite(a)).sum())} NaN or infinite values")


class SyntheticSet:
    """A stored synthetic set; `.data` is a TensorData like any real set."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.manifest = read_manifest(self.path)
        if not self.manifest.get("complete"):
            raise DatafreeError(f"synthetic set {str(self.path)!r} is incomplete (interrupted?); re-run the same `datafree synthesize` command to finish it")
        xs, ys, ls = [], [], []
        shards = sorted(p for p in self.path.iterdir() if _SHARD.match(p.name))
        num, size = int(self.manifest["num"]), int(self.manifest["shard_size"])
        have = {_shard_index(p.name) for p in shards}
        missing = [i for i in range(-(-num // size)) if i not in have]
        if missing:
            names = ", ".join(f"shard_{i:05d}.npz" for i in missing[:3]) + (" ..." if len(missing) > 3 else "")
            raise DatafreeError(f"synthetic set {str(self.path)!r} lacks {len(missing)} of its shards ({names}); "
                                "re-run the same `datafree synthesize` command to re-make them")
        spec = InputSpec.from_dict(self.manifest["input_spec"])
        for p in shards:
            i = _shard_index(p.name)
            if i * size >= num:
                raise DatafreeError(f"shard {p} is beyond the set's {num} samples; delete it and re-run the same "
                                    "`datafree synthesize` command")
            try:
                with np.load(p, allow_pickle=False) as d:
                    arrays = {k: d[k] for k in ("x", "y", "logits")}
            except Exception as e:  # truncated zip, missing arrays, bad pickle: all the same to the user
                raise DatafreeError(f"shard {p} is corrupt or truncated ({type(e).__name__}: {str(e)[:80]}); delete it "
                                    "and re-run the same `datafree synthesize` command") from None
            _check_shard(p, arrays["x"], arrays["y"], arrays["logits"], spec, min(size, num - i * size))
            xs.append(torch.from_numpy(arrays["x"]))
            ys.append(torch.from_numpy(arrays["y"]))
            ls.append(torch.from_numpy(arrays["logits"]))
        if not xs:
            raise DatafreeError(f"synthetic set {str(self.path)!r} has no shards")
        name = f"synthetic:{self.manifest.get('method')}"
        self.data = TensorData(torch.cat(xs).float(), torch.cat(ys).long(), torch.cat(ls).float(), name=name)
        self.input_spec = spec

    def __len__(self) -> int:
        return len(self.data)
