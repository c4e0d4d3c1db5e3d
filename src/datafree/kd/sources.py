"""Data sources above synthesis: resolving a SOURCE argument, and the growing pool (synthesize a round with the current student)."""
from __future__ import annotations

import dataclasses
import os
import sys
import time
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn as nn

from ..core.config import Config, opt
from ..core.errors import DatafreeError
from ..core.seeds import derived_seed
from ..core.utils import frozen_eval
from ..data.base import TensorData, concat_data
from ..data.real import DATASET_SPECS, is_dataset_spec, load_dataset
from ..data.source import Batch, Source, TensorSource
from ..data.synthetic import SyntheticSet
from ..models.loading import fingerprint, input_spec_of
from ..synth.base import SYNTHESIZERS, StepCallback, SynthConfig, make_config, synthesize
from ..synth.generative import GenerativeSynthesizer, TrainedGenerator

LARGE_IMAGE = 112 * 112  # pixels from which on-the-fly synthesis uses the large-image budget
LARGE_BUDGET = {"num": 64, "iterations": 100, "low_res": 0.75}  # EfficientNet-Lite0 W8A8: BENCHMARKS.md "Real scale"


def on_the_fly_config(method: str, spec: Any, num: Optional[int], seed: int) -> Any:
    """The synthesis settings of a method named as a data source: its defaults for `num` samples (512 when not
    given); for images of 112x112 px and more a budget that fits minutes on a CPU (at most 64 samples, 100 iterations,
    three quarters of them at half resolution; said on stderr), which `datafree synthesize` lifts."""
    cfg = make_config(method, num=num or 512, seed=seed)
    h, w = spec.shape[1:]
    names = {f.name for f in dataclasses.fields(cfg)}
    if h * w < LARGE_IMAGE or "iterations" not in names:  # small images, or a method without iterations (gaussian)
        return cfg
    over: dict[str, Any] = {k: v for k, v in LARGE_BUDGET.items() if k in names}
    over["num"] = min(cfg.num, LARGE_BUDGET["num"])
    over["iterations"] = min(cfg.iterations, LARGE_BUDGET["iterations"])
    print(f"note: {h}x{w} px inputs: {method} on the fly synthesizes {over['num']} samples x {over['iterations']} "
          "iterations" + (f" (the first {over['low_res']:.0%} at half resolution)" if "low_res" in over else "")
          + "; for more, run `datafree synthesize` and pass its directory", file=sys.stderr)
    return cfg.replace(**over)


def load_source(source: str, model: nn.Module, num: Optional[int] = None, seed: int = 0,
                data_root: Optional[str] = None, progress: bool = True) -> TensorData:
    """Data for `model` from a SyntheticSet dir, an on-the-fly synthesis method, or a real dataset spec."""
    spec = input_spec_of(model)
    if is_dataset_spec(source):
        return load_dataset(source, spec, data_root).subset(num, seed)
    if source in SYNTHESIZERS:
        return synthesize(model, source, on_the_fly_config(source, spec, num, seed), progress=progress)
    p = Path(source)
    if p.is_dir():
        s = SyntheticSet(p)
        if tuple(s.input_spec.shape) != tuple(spec.shape):
            raise DatafreeError(f"synthetic set {source} has inputs {tuple(s.input_spec.shape)} but the model expects {tuple(spec.shape)}")
        fp = s.manifest.get("teacher_fingerprint")
        if fp and fp != fingerprint(model):
            print(f"warning: {source} was synthesized from a different model (fingerprint {fp})", file=sys.stderr)
        return s.data.subset(num, seed)
    if os.sep in source or source.startswith("."):
        raise DatafreeError(f"data source {source!r} not found; create it with `datafree synthesize ... --out {source}`")
    raise DatafreeError(f"unknown data source {source!r}; give a synthetic-set directory, a method "
                        f"({', '.join(SYNTHESIZERS.names())}) or a dataset spec ({', '.join(DATASET_SPECS)})")


@dataclasses.dataclass
class RoundsConfig(Config):
    """Rounds: synthesize `per_round` samples (student in the loop), add them to the pool, distill `steps_per_round`."""

    rounds: int = opt(4, "synthesize-then-distill rounds", lo=1)
    per_round: int = opt(256, "samples synthesized per round", lo=1)
    steps_per_round: int = opt(200, "KD steps after each round", lo=0)

    @property
    def total_steps(self) -> int:
        """KD steps over all rounds."""
        return self.rounds * self.steps_per_round


class PoolSource(Source):
    """A pool that grows: before KD steps 0, s, 2s, ... (s = steps_per_round) it synthesizes `per_round` samples with
    `method` against the current student and adds them; batches are drawn from the whole pool. The pool is state."""

    def __init__(self, method: str, synth_config: Optional[SynthConfig] = None, rounds: Optional[RoundsConfig] = None,
                 seed: int = 0, progress: bool = True) -> None:
        self.method = method
        self.rounds = rounds or RoundsConfig()
        self.rounds.verify()
        cfg = synth_config or SYNTHESIZERS.get(method).config_cls()
        self.synth_config = cfg.replace(num=self.rounds.per_round)
        self.name = f"pool:{method}"
        self.teacher_logits = True  # rounds are labelled by the teacher that update() receives: the loop's own
        self.seed, self.progress = int(seed), progress
        self.pool: list[TensorData] = []
        self.synth_seconds = 0.0
        self._inner: Optional[TensorSource] = None

    def __len__(self) -> int:
        return sum(len(p) for p in self.pool)

    def identity(self) -> dict[str, Any]:
        return {"method": self.method, "synth": self.synth_config.to_dict(), "rounds": self.rounds.to_dict()}

    def _over_pool(self) -> TensorSource:
        return TensorSource(concat_data(self.pool, "pool"), seed=self.seed)

    def _rebuild(self) -> None:
        epoch = self._inner.epoch + 1 if self._inner is not None else 0  # a grown pool starts a fresh epoch
        self._inner = self._over_pool()
        self._inner.epoch = epoch

    def _round(self, teacher: nn.Module, student: nn.Module, r: int) -> tuple[TensorData, dict[str, Any]]:
        """Synthesize round r's samples with the current student; returns them and what to log."""
        cfg = self.synth_config.replace(seed=self.synth_config.seed * 1000 + r)
        return synthesize(teacher, self.method, cfg, progress=self.progress, student=student), {}

    def update(self, teacher: nn.Module, student: nn.Module, step: int) -> dict:
        r = len(self.pool)
        spr = max(1, self.rounds.steps_per_round)
        if r >= self.rounds.rounds or step < r * spr:
            return {}
        t0 = time.time()
        new, parts = self._round(teacher, student, r)
        self.synth_seconds += time.time() - t0
        self.pool.append(TensorData(new.x.cpu(), new.y.cpu() if new.y is not None else None,
                                    new.logits.cpu() if new.logits is not None else None, name=f"round{r}"))
        self._rebuild()
        return {"round": r + 1, "pool": len(self), "synth_seconds": round(time.time() - t0, 2), **parts}

    def sample(self, batch_size: int, generator: Optional[torch.Generator] = None) -> Batch:
        if self._inner is None:
            raise RuntimeError("the pool is empty: update() runs the first round before the first batch")
        return self._inner.sample(batch_size, generator)

    def state_dict(self) -> dict:
        return {"pool": [{"x": d.x, "y": d.y, "logits": d.logits} for d in self.pool],
                "synth_seconds": self.synth_seconds,
                "inner": self._inner.state_dict() if self._inner is not None else None}

    def load_state_dict(self, state: dict) -> None:
        self.pool = [TensorData(d["x"], d["y"], d["logits"], name=f"round{i}") for i, d in enumerate(state["pool"])]
        self.synth_seconds = float(state["synth_seconds"])
        self._inner = None
        if self.pool:
            self._inner = self._over_pool()
            if state["inner"] is not None:
                self._inner.load_state_dict(state["inner"])


class GeneratorSource(PoolSource):
    """A generator method as a stream. `dafl`/`rdskd`: the generator is trained against the teacher before the first
    batch, then every batch is a fresh forward pass. `cmi`/`fast`: before KD steps 0, s, 2s, ... one round fits
    `per_round` samples (the current student in the adversarial term) and adds them to a pool that batches are drawn
    from. The generator, its optimizers, banks, counters and the pool are state (a resumed run continues exactly)."""

    def __init__(self, method: str, synth_config: Optional[SynthConfig] = None, rounds: Optional[RoundsConfig] = None,
                 seed: int = 0, progress: bool = True) -> None:
        cls = SYNTHESIZERS.get(method)
        if not issubclass(cls, GenerativeSynthesizer):
            raise DatafreeError(f"{method!r} is not a generator method; generator methods: "
                                f"{', '.join(n for n in SYNTHESIZERS.names() if issubclass(SYNTHESIZERS.get(n), GenerativeSynthesizer))}")
        super().__init__(method, synth_config, rounds, seed, progress)
        self.synth_config = self.synth_config.replace(batch_size=self.rounds.per_round)
        self.name = f"generator:{method}"
        self.fresh = cls.fresh_samples
        self.engine: Optional[GenerativeSynthesizer] = None
        self._pending: Optional[dict] = None
        self.generated = 0  # fresh samples drawn so far

    def __len__(self) -> int:
        return self.generated if self.fresh else super().__len__()

    def _engine(self, teacher: nn.Module, student: nn.Module) -> GenerativeSynthesizer:
        if self.engine is None:
            cls = SYNTHESIZERS.get(self.method)
            if cls.needs_bn:
                from ..models.bn_hooks import require_bn

                require_bn(teacher, self.method)
            engine = cls(teacher, self.synth_config, student)
            assert isinstance(engine, GenerativeSynthesizer)
            if self._pending is not None:
                engine.load_state_dict(self._pending)
                self._pending = None
            self.engine = engine
        self.engine.student = student
        return self.engine

    def _bar(self, total: int, desc: str) -> StepCallback:
        bar = None
        if self.progress and total > 0:
            from tqdm.auto import tqdm

            bar = tqdm(total=total, desc=desc, unit="it", leave=False, dynamic_ncols=True, disable=None)
        return StepCallback(bar)

    def update(self, teacher: nn.Module, student: nn.Module, step: int) -> dict:
        if not self.fresh:
            return super().update(teacher, student, step)
        eng = self._engine(teacher, student)
        assert isinstance(eng, TrainedGenerator)
        if eng.trained:
            return {}
        t0 = time.time()
        cb = self._bar(eng.work_units(0), f"train {self.method} generator")
        try:
            with frozen_eval(teacher):
                parts = eng.train(cb)
        finally:
            if cb.bar is not None:
                cb.bar.close()
        self.synth_seconds += time.time() - t0
        return {"generator_steps": eng.steps_done, "synth_seconds": round(time.time() - t0, 2),
                **{k: round(v, 4) for k, v in parts.items()}}

    def _round(self, teacher: nn.Module, student: nn.Module, r: int) -> tuple[TensorData, dict[str, Any]]:
        eng = self._engine(teacher, student)
        n = self.rounds.per_round
        gen = torch.Generator().manual_seed(derived_seed(self.synth_config.seed, "shard", r))
        y = eng.labels(r * n, n)
        cb = StepCallback()
        with frozen_eval(teacher), frozen_eval(student):
            x = eng.make_batch(y, gen, cb)
            with torch.no_grad():
                logits = teacher(x)
        return TensorData(x, y, logits, name=f"round{r}"), {k: round(v, 4) for k, v in cb.last.items()}

    def sample(self, batch_size: int, generator: Optional[torch.Generator] = None) -> Batch:
        if not self.fresh:
            return super().sample(batch_size, generator)
        if self.engine is None:
            raise RuntimeError("the generator is not trained: update() trains it before the first batch")
        self.generated += batch_size
        if getattr(self.engine.cfg, "joint", False):
            t0 = time.time()
            with frozen_eval(self.engine.teacher):
                x, logits, _ = self.engine.joint_batch(batch_size)  # type: ignore[union-attr]
            self.synth_seconds += time.time() - t0
            return Batch(x, logits=logits)
        return Batch(self.engine.generate(batch_size, generator or torch.Generator()))

    def state_dict(self) -> dict:
        eng = self.engine.state_dict() if self.engine is not None else self._pending
        return dict(super().state_dict(), engine=eng, generated=self.generated)

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.generated = int(state.get("generated", 0))
        if self.engine is not None and state["engine"] is not None:
            self.engine.load_state_dict(state["engine"])
        else:
            self._pending = state["engine"]


def stream_source(method: str, synth_config: Optional[SynthConfig] = None, rounds: Optional[RoundsConfig] = None,
                  seed: int = 0, progress: bool = True) -> PoolSource:
    """The streaming source of a method: a GeneratorSource for generator methods, a growing PoolSource otherwise."""
    if issubclass(SYNTHESIZERS.get(method), GenerativeSynthesizer):
        return GeneratorSource(method, synth_config, rounds, seed, progress)
    return PoolSource(method, synth_config, rounds, seed, progress)
