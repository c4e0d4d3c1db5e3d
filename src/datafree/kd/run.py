"""A resumable KD run: the one KD loop from any data source with a checkpoint directory (student, optimizer,
schedule, RNG, source state), a time limit and a validation curve."""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn as nn

from ..core import parallel
from ..core.errors import DatafreeError, first_line
from ..core.schema import MISFIT_ERRORS, Schema
from ..core.utils import load_tensors, remove_stale_temps, save_atomic
from ..data.base import TensorData
from ..data.source import SourceLike
from ..models.loading import fingerprint, load_state_dict_
from .loop import Distiller, KDConfig

STATE = "state.pt"
SAVE_AFTER_SYNTH_S = 30.0  # checkpoint after source updates once this much synthesis time is unsaved
PRINT_EVERY_S = 10.0  # at most one progress line per this many seconds for source updates
FIX = "delete it or pass --overwrite"  # what to do about a checkpoint that cannot be used
CHECKPOINT_VERSION = 2  # 2: one state.pt holding the data source's state (pools included); loaded with weights_only


def _load(path: Path) -> Any:
    return load_tensors(path, "is corrupt, truncated or not a datafree run checkpoint", FIX)


def check_state(st: dict, where: str) -> dict:
    """A run checkpoint's fields: the student's tensors (finite), the distiller's optimizer, schedule, RNG, step,
    history and source state, the seconds used."""
    s = Schema(where, FIX)
    s.tensors(s.get(st, "student", dict), "student")
    d = s.get(st, "distiller", dict)
    for k in ("opt", "sched"):
        s.get(d, k, dict, "distiller")
    g = s.get(d, "gen", torch.Tensor, "distiller")
    if g.dtype != torch.uint8 or g.dim() != 1:
        s.fail("distiller.gen", f"must be a 1-D uint8 RNG state, got {g.dtype} of shape {tuple(g.shape)}")
    s.number(d, "step", "distiller", lo=0)
    for i, h in enumerate(s.get(d, "history", list, "distiller")):
        f = f"distiller.history[{i}]"
        s.number(s.mapping(h, f), "step", f, lo=1)
        s.get(h, "loss", float, f)
        s.get(h, "val_top1", float, f, required=False)
    s.number(d, "elapsed", "distiller", lo=0, required=False, kind=float)
    s.get(d, "source", (dict, type(None)), "distiller")
    s.number(st, "seconds", lo=0, required=False, kind=float)
    return st


class RunCheckpoint:
    """A run directory holding state.pt (student, distiller with its source, progress), written atomically."""

    def __init__(self, path: Optional[str], identity: dict, overwrite: bool) -> None:
        self.dir = Path(path) if path else None
        self.identity = dict(identity, checkpoint_version=CHECKPOINT_VERSION)
        self.state: Optional[dict] = None
        if self.dir is None:
            return
        if self.dir.exists() and not self.dir.is_dir():
            raise DatafreeError(f"checkpoint dir {self.dir} is a file; choose another --checkpoint-dir")
        if overwrite and self.dir.exists() and parallel.is_main():
            for p in self.dir.glob("*.pt"):
                p.unlink()
        if parallel.is_main():
            self.dir.mkdir(parents=True, exist_ok=True)
            remove_stale_temps(self.dir)  # a run killed mid-save left them
        parallel.barrier()  # under torchrun every rank reads the same state, after rank 0 cleared it
        sp = self.dir / STATE
        if sp.exists():
            st = _load(sp)
            old = st.get("identity") if isinstance(st, dict) else None
            if not isinstance(old, dict):
                raise DatafreeError(f"{sp} is not a datafree run checkpoint (no field 'identity'); delete it or pass "
                                    "--overwrite")
            if old != self.identity:
                diff = sorted(k for k in set(self.identity) | set(old) if self.identity.get(k) != old.get(k))
                raise DatafreeError(f"{self.dir} holds a checkpoint of a different run (differs in {', '.join(diff)}); "
                                    "choose another --checkpoint-dir or pass --overwrite")
            self.state = check_state(st, str(sp))

    def restore(self, student: nn.Module, distiller: Distiller, steps: int) -> float:
        """Load the saved student and distiller state into these objects (each field checked); returns the seconds
        the run had used."""
        st = self.state
        assert st is not None and self.dir is not None
        where = str(self.dir / STATE)
        s = Schema(where, FIX)
        if st["distiller"]["step"] > steps:
            s.fail("distiller.step", f"is {st['distiller']['step']}, past this run's {steps} steps")
        load_state_dict_(student, st["student"], f"{where}: field 'student': its tensors")
        try:
            distiller.load_state_dict(st["distiller"])
        except DatafreeError:
            raise
        except MISFIT_ERRORS as e:
            s.fail("distiller", f"does not fit this run ({type(e).__name__}: {first_line(e, 120)})")
        return float(st.get("seconds", 0.0))

    def save(self, student: nn.Module, distiller: Distiller, extra: dict) -> None:
        """Write the run's state (atomic; rank 0 under torchrun)."""
        if self.dir is not None and parallel.is_main():
            save_atomic({"identity": self.identity, "student": student.state_dict(),
                         "distiller": distiller.state_dict(), **extra}, self.dir / STATE)


def distill_student_(student: nn.Module, teacher: nn.Module, kd: KDConfig, data: SourceLike,
                     checkpoint_dir: Optional[str] = None, val: Optional[TensorData] = None, progress: bool = True,
                     overwrite: bool = False, checkpoint_every: int = 200, time_limit: Optional[float] = None) -> dict:
    """Train `student` in place from any data source for kd.steps steps (or until `time_limit` seconds of the run,
    resumed pieces included); checkpointed every `checkpoint_every` steps and after source updates once 30 s of
    synthesis is unsaved, resumable; returns a summary with the validation curve."""
    t0 = time.time()
    progress = progress and parallel.is_main()
    dist = Distiller(student, teacher, kd, source=data)
    source = dist.source
    assert source is not None
    ident = getattr(source, "identity", lambda: {"name": source.name})()
    ck = RunCheckpoint(checkpoint_dir, {"teacher": fingerprint(teacher), "kd": kd.to_dict(), "source": ident}, overwrite)
    seconds_before = 0.0
    if ck.state is not None:
        seconds_before = ck.restore(student, dist, kd.steps)
        if progress:
            print(f"resuming from {checkpoint_dir}: {dist.step}/{kd.steps} steps done", flush=True)

    def elapsed() -> float:
        return round(seconds_before + time.time() - t0, 2)

    pending = {"synth_s": 0.0, "printed_at": -math.inf}  # synthesis seconds not yet checkpointed; last progress line

    def on_update(info: dict) -> None:
        pending["synth_s"] += float(info.get("synth_seconds", 0.0))
        if pending["synth_s"] >= SAVE_AFTER_SYNTH_S:  # costly synthesis is never paid twice; quick rounds ride on the next save
            ck.save(student, dist, {"seconds": elapsed()})
            pending["synth_s"] = 0.0
        if progress and time.time() - pending["printed_at"] >= PRINT_EVERY_S:
            pending["printed_at"] = time.time()
            print(f"step {dist.step}: {source.name}: " + ", ".join(f"{k} {v}" for k, v in info.items()), flush=True)

    chunk = max(1, checkpoint_every)
    deadline = None if time_limit is None else time.time() + time_limit - seconds_before
    while dist.step < kd.steps:
        asked = min(chunk, kd.steps - dist.step)
        hist = dist.run(steps=asked, val=val, progress=progress, on_update=on_update, deadline=deadline)
        ck.save(student, dist, {"seconds": elapsed()})
        pending["synth_s"] = 0.0
        if progress and hist:
            v = f", val top-1 {hist[-1]['val_top1']:.2f}%" if "val_top1" in hist[-1] else ""
            print(f"step {dist.step}/{kd.steps}: student loss {hist[-1]['loss']:.4f}{v} ({elapsed():.0f} s)", flush=True)
        if len(hist) < asked:  # the time limit (checked alike on every rank)
            if progress:
                print(f"time limit of {time_limit:.0f} s reached at step {dist.step}/{kd.steps}", flush=True)
            break
    student.eval()
    last_val = next((h["val_top1"] for h in reversed(dist.history) if "val_top1" in h), None)
    synth = float(getattr(source, "synth_seconds", 0.0))
    curve = [{"step": h["step"], "val_top1": h["val_top1"], "loss": round(h["loss"], 5), **({"seconds": h["seconds"]} if "seconds" in h else {})}
             for h in dist.history if "val_top1" in h]
    return {"steps": dist.step, "stopped_at_time_limit": dist.step < kd.steps, "samples": len(source), "seconds": elapsed(), "synth_seconds": round(synth, 2),  # type: ignore[arg-type]
            "final_loss": dist.history[-1]["loss"] if dist.history else math.nan, "val_top1": last_val, "curve": curve}
