"""Data-free distillation of a student: from a fixed data source, or in rounds that synthesize with the student in the loop."""
from __future__ import annotations

import dataclasses
import math
import os
import time
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn as nn

from .config import Config, check
from .data.base import TensorData, concat_data
from .distill import Distiller, KDConfig
from .errors import DatafreeError, first_line
from .models.loading import fingerprint
from .synth.base import SYNTHESIZERS, SynthConfig, synthesize

STATE = "state.pt"


@dataclasses.dataclass
class RoundsConfig(Config):
    """Rounds: synthesize `per_round` samples (student in the loop), add them to the pool, distill `steps_per_round`."""

    rounds: int = 4
    per_round: int = 256
    steps_per_round: int = 200

    def validate(self) -> None:
        check(self.rounds >= 1, f"rounds must be >= 1, got {self.rounds}")
        check(self.per_round >= 1, f"per_round must be >= 1, got {self.per_round}")
        check(self.steps_per_round >= 0, f"steps_per_round must be >= 0, got {self.steps_per_round}")


def save_atomic(obj: Any, path: str | os.PathLike) -> None:
    """torch.save to a temporary file, then rename: an interrupted write never leaves a truncated file (parents created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _load(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # a truncated or foreign file
        raise DatafreeError(f"checkpoint {path} is unreadable ({first_line(e, 120)}); delete it or pass --overwrite") from None


class _Checkpoint:
    """A run directory: state.pt (student, distiller, progress) and pool_NNN.pt (samples of each round)."""

    def __init__(self, path: Optional[str], identity: dict, overwrite: bool) -> None:
        self.dir = Path(path) if path else None
        self.identity = identity
        self.state: Optional[dict] = None
        if self.dir is None:
            return
        if overwrite and self.dir.exists():
            for p in self.dir.glob("*.pt"):
                p.unlink()
        self.dir.mkdir(parents=True, exist_ok=True)
        sp = self.dir / STATE
        if sp.exists():
            st = _load(sp)
            if st.get("identity") != identity:
                diff = sorted(k for k in set(identity) | set(st.get("identity", {}))
                              if identity.get(k) != st.get("identity", {}).get(k))
                raise DatafreeError(f"{self.dir} holds a checkpoint of a different run (differs in {', '.join(diff)}); "
                                    "choose another --checkpoint-dir or pass --overwrite")
            self.state = st

    def save(self, student: nn.Module, distiller: Distiller, done: int, extra: dict) -> None:
        if self.dir is not None:
            save_atomic({"identity": self.identity, "student": student.state_dict(), "distiller": distiller.state_dict(),
                          "done": done, **extra}, self.dir / STATE)

    def save_pool(self, r: int, d: TensorData) -> None:
        if self.dir is not None:
            save_atomic({"x": d.x, "y": d.y, "logits": d.logits}, self.dir / f"pool_{r:03d}.pt")

    def load_pool(self, r: int) -> TensorData:
        assert self.dir is not None
        p = self.dir / f"pool_{r:03d}.pt"
        if not p.exists():
            raise DatafreeError(f"{p} is missing from the checkpoint; pass --overwrite to start over")
        d = _load(p)
        return TensorData(d["x"], d["y"], d["logits"], name=f"pool_{r:03d}")


def distill_student_(student: nn.Module, teacher: nn.Module, kd: KDConfig, data: Optional[TensorData] = None,
                     method: Optional[str] = None, synth_config: Optional[SynthConfig] = None,
                     rounds: Optional[RoundsConfig] = None, checkpoint_dir: Optional[str] = None,
                     val: Optional[TensorData] = None, progress: bool = True, overwrite: bool = False,
                     checkpoint_every: int = 200) -> dict:
    """Train `student` in place from `data` (kd.steps steps) or in `rounds` of `method` synthesis; resumable; returns a summary."""
    if (data is None) == (method is None):
        raise DatafreeError("give either fixed data or a synthesis method for rounds, not both")
    t0 = time.time()
    ident: dict[str, Any] = {"teacher": fingerprint(teacher), "kd": kd.to_dict()}
    if method is not None:
        rounds = rounds or RoundsConfig()
        rounds.validate()
        scfg = synth_config or SYNTHESIZERS.get(method).config_cls()
        scfg = scfg.replace(num=rounds.per_round)
        kd = kd.replace(steps=rounds.rounds * rounds.steps_per_round)
        ident.update(kd=kd.to_dict(), method=method, synth=scfg.to_dict(), rounds=rounds.to_dict())
    else:
        assert data is not None
        ident.update(data=data.name, n=len(data))
    ck = _Checkpoint(checkpoint_dir, ident, overwrite)
    dist = Distiller(student, teacher, kd)
    done, seconds_before, synth_seconds = 0, 0.0, 0.0
    if ck.state is not None:
        student.load_state_dict(ck.state["student"])
        dist.load_state_dict(ck.state["distiller"])
        done, seconds_before = ck.state["done"], ck.state.get("seconds", 0.0)
        synth_seconds = ck.state.get("synth_seconds", 0.0)
        if progress:
            unit = "round" if method else "step"
            print(f"resuming from {checkpoint_dir}: {done} {unit}s done", flush=True)

    def elapsed() -> float:
        return round(seconds_before + time.time() - t0, 2)

    if method is not None:
        assert rounds is not None
        pool = [ck.load_pool(r) for r in range(done)]
        for r in range(done, rounds.rounds):
            ts = time.time()
            cfg_r = scfg.replace(seed=scfg.seed * 1000 + r)
            student.eval()
            new = synthesize(teacher, method, cfg_r, progress=progress, student=student)
            synth_seconds += time.time() - ts
            ck.save_pool(r, new)
            pool.append(new)
            hist = dist.run(concat_data(pool, "pool"), rounds.steps_per_round, val=val, progress=progress)
            ck.save(student, dist, r + 1, {"seconds": elapsed(), "synth_seconds": synth_seconds})
            if progress:
                msg = f"round {r + 1}/{rounds.rounds}: pool {sum(len(p) for p in pool)}"
                if hist:
                    msg += f", loss {hist[-1]['loss']:.4f}"
                    if "val_top1" in hist[-1]:
                        msg += f", val top-1 {hist[-1]['val_top1']:.2f}%"
                print(msg, flush=True)
        n_samples = sum(len(p) for p in pool)
    else:
        assert data is not None
        chunk = max(1, checkpoint_every)
        while dist.step < kd.steps:
            dist.run(data, min(chunk, kd.steps - dist.step), val=val, progress=progress)
            ck.save(student, dist, dist.step, {"seconds": elapsed()})
        n_samples = len(data)
    student.eval()
    last_val = next((h["val_top1"] for h in reversed(dist.history) if "val_top1" in h), None)
    return {"steps": dist.step, "samples": n_samples, "seconds": elapsed(), "synth_seconds": round(synth_seconds, 2),
            "final_loss": dist.history[-1]["loss"] if dist.history else math.nan, "val_top1": last_val}
