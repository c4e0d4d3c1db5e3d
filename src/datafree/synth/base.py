"""Synthesizer registry, shared pixel-optimization loop and the shard-writing runner."""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import sys
import time
from pathlib import Path
from typing import Any, ClassVar, Optional, cast

import torch
import torch.nn as nn
import torch.nn.functional as F

from .._version import __version__
from ..core import parallel
from ..core.config import Config, opt
from ..core.errors import DatafreeError, first_line
from ..core.registry import Registry
from ..core.schema import MISFIT_ERRORS
from ..core.seeds import derived_seed
from ..core.utils import frozen_eval, load_tensors, model_device, save_atomic
from ..data.base import TensorData
from ..data.grid import save_grid
from ..data.synthetic import SyntheticSet, SyntheticSetWriter
from ..models.loading import fingerprint, input_spec_of
from ..models.record import record_of
from ..models.spec import InputSpec
from .priors import jitter_flip

SYNTHESIZERS: Registry[type["Synthesizer"]] = Registry("synthesis method")
SYNTH_STATE = "synth_state.pt"  # a stateful synthesizer's state beside the shards (resume)


def register_synthesizer(name: str):
    """Class decorator registering a Synthesizer subclass under `name`."""

    def deco(cls: type["Synthesizer"]) -> type["Synthesizer"]:
        cls.name = name
        return SYNTHESIZERS.register(name)(cls)

    return deco


def list_synthesizers() -> list[str]:
    """Names of all synthesis methods."""
    return SYNTHESIZERS.names()


@dataclasses.dataclass
class SynthConfig(Config):
    """Options shared by all synthesizers."""

    num: int = opt(512, "number of samples", cli=True, lo=1)
    batch_size: int = opt(128, "samples optimized together (one shard each)", cli=True, lo=1)
    seed: int = opt(0, "random seed", cli=True)


@dataclasses.dataclass
class PixelConfig(SynthConfig):
    """Options of methods that optimize pixels with Adam."""

    iterations: int = opt(200, "optimization steps per batch", cli=True, lo=0)
    lr: float = opt(0.25, "Adam learning rate on the pixels", cli=True, lo=0, lo_open=True)
    beta1: float = 0.5
    beta2: float = 0.9
    jitter: int = opt(2, "random shift in pixels", lo=0)
    flip: bool = True
    tv: float = 0.0  # total-variation prior weight
    l2: float = 0.0  # L2 prior weight on the normalized pixels
    init_std: float = 1.0  # std of the starting noise in normalized space
    channels_last: bool = opt(False, "optimize a channels-last working copy of the teacher (faster on CPU)", cli=True)
    bf16: bool = opt(False, "run the teacher under bfloat16 autocast (faster on CPUs with AVX512-BF16 or AMX; losses and "
                            "statistics stay float32)", cli=True)
    low_res: float = opt(0.0, "fraction of the iterations optimized at a lower resolution (--low-res-scale, default "
                              "half) before the upsampled batch finishes at full size (DeepInversion's ImageNet "
                              "schedule; a half-size step costs about a quarter); 0 = off, inputs under 32 px stay at "
                              "full size", cli=True, lo=0.0,
                         hi=1.0, hi_open=True)
    low_res_scale: float = opt(0.5, "side of the --low-res phase's images relative to full size (0.5 = 112 px for a "
                                    "224 px model; 0.25 = 56 px, each step ~3x cheaper again)", cli=True, lo=0.1,
                               hi=1.0, hi_open=True)


class Synthesizer:
    """Turns a teacher into samples; subclasses implement `make_batch`."""

    name: ClassVar[str] = ""
    config_cls: ClassVar[type[SynthConfig]] = SynthConfig
    needs_bn: ClassVar[bool] = False
    iterative: ClassVar[bool] = False  # whether `iterations` steps are run per batch
    class_conditional: ClassVar[bool] = True  # labels are targets; otherwise the teacher's argmax
    needs_student: ClassVar[bool] = False  # whether the objective uses a student model (e.g. ADI's competition)

    def __init__(self, teacher: nn.Module, config: SynthConfig, student: Optional[nn.Module] = None) -> None:
        if not isinstance(config, self.config_cls):
            raise DatafreeError(f"{self.name} needs a {self.config_cls.__name__}, got {type(config).__name__}")
        self.cfg = config
        if getattr(config, "channels_last", False) and any(p.dim() == 4 for p in teacher.parameters()):
            teacher = copy.deepcopy(teacher).to(memory_format=torch.channels_last)  # working copy: no side effects
            self.channels_last = True
        else:
            self.channels_last = False
        self.teacher = teacher
        self.student = student  # optional; read only (the caller owns its training)
        self.spec: InputSpec = input_spec_of(teacher)
        self.device = model_device(teacher)
        lo, hi = self.spec.pixel_bounds()
        self.lo, self.hi = lo.to(self.device), hi.to(self.device)

    def labels(self, start: int, n: int) -> torch.Tensor:
        """Class-balanced target labels for samples start..start+n."""
        return (torch.arange(start, start + n) % self.spec.num_classes).to(self.device)

    def init_batch(self, n: int, gen: torch.Generator, std: float = 1.0) -> torch.Tensor:
        """Starting point: N(0, std²) noise in the normalized input space, clamped to valid pixels."""
        x = (torch.randn((n, *self.spec.shape), generator=gen) * std).to(self.device)
        return torch.maximum(torch.minimum(x, self.hi), self.lo)

    def make_batch(self, y: torch.Tensor, gen: torch.Generator, step: "StepCallback") -> torch.Tensor:
        """Return a batch of normalized inputs for target labels y."""
        raise NotImplementedError

    def close(self) -> None:
        """Release hooks or other resources held on the teacher."""

    def work_units(self, n_batches: int) -> int:
        """Progress units that making `n_batches` batches takes (iterations for iterative methods)."""
        return n_batches * max(1, getattr(self.cfg, "iterations", 0) if self.iterative else 1)

    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs beyond the finished shards (a generator's weights; empty for pixel methods)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` saved."""

    # -- shared pixel optimization -------------------------------------------------------------
    def loss(self, x: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """Objective of pixel-optimizing methods (override)."""
        raise NotImplementedError

    def mix_inputs(self, x: torch.Tensor, y: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch the teacher sees at one pixel-optimization step and its target (labels, or soft labels when
        samples are mixed); identity unless a method mixes data."""
        return x, y

    def optimize_pixels(self, y: torch.Tensor, gen: torch.Generator, step: "StepCallback") -> torch.Tensor:
        """Adam on the pixels with jitter/flip, cosine learning rate and clamping to valid pixels; with `low_res`, the
        first part of the iterations at a lower resolution (`low_res_scale` of each side), then the upsampled batch
        finishes at full resolution."""
        cfg = cast(PixelConfig, self.cfg)
        c, h, w = self.spec.shape
        n_low = int(round(cfg.low_res * cfg.iterations)) if min(h, w) >= 32 else 0
        if n_low == 0:
            return self._adam(self.init_batch(len(y), gen, cfg.init_std), y, gen, step, cfg.iterations, cfg.jitter)
        k = cfg.low_res_scale
        lh, lw = max(1, int(round(h * k))), max(1, int(round(w * k)))
        x = (torch.randn((len(y), c, lh, lw), generator=gen) * cfg.init_std).to(self.device)
        x = self._adam(x, y, gen, step, n_low, max(0, int(cfg.jitter * k)), keep_best=False)
        x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)
        return self._adam(x, y, gen, step, cfg.iterations - n_low, cfg.jitter)

    def _adam(self, x: torch.Tensor, y: torch.Tensor, gen: torch.Generator, step: "StepCallback", iterations: int,
              jitter: int, keep_best: Optional[bool] = None) -> torch.Tensor:
        """`iterations` Adam steps on the batch x (any resolution the teacher takes), cosine schedule, valid pixels."""
        cfg = cast(PixelConfig, self.cfg)
        x = torch.maximum(torch.minimum(x, self.hi), self.lo)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        x.requires_grad_(True)
        opt = torch.optim.Adam([x], lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, iterations))
        keep_best = bool(getattr(cfg, "keep_best", False)) if keep_best is None else keep_best
        best, best_loss = None, math.inf
        for it in range(iterations):
            opt.zero_grad(set_to_none=True)
            xa = jitter_flip(x, jitter, cfg.flip, gen)
            xa, target = self.mix_inputs(xa, y, gen)
            with torch.autocast(device_type=xa.device.type, dtype=torch.bfloat16, enabled=bool(getattr(cfg, "bf16", False))):
                logits = self.teacher(xa)
            loss, parts = self.loss(xa, logits.float(), target)
            if not torch.isfinite(loss):
                raise DatafreeError(f"{self.name}: loss became {loss.item()} at iteration {it}; lower --lr "
                                    f"(now {cfg.lr}) or check the model for NaN weights (finished shards are kept)")
            if keep_best and loss.item() < best_loss:
                best_loss, best = loss.item(), x.detach().clone()  # the batch this loss was measured on
            loss.backward()
            opt.step()
            sched.step()
            with torch.no_grad():
                x.copy_(torch.maximum(torch.minimum(x, self.hi), self.lo))
            step(1, parts)
        return best if best is not None else x.detach()


class StepCallback:
    """Progress reporting: advances a bar and keeps the last loss parts."""

    def __init__(self, bar: Any = None) -> None:
        self.bar = bar
        self.last: dict[str, float] = {}

    def __call__(self, n: int, parts: Optional[dict[str, float]] = None) -> None:
        if parts:
            self.last = parts
        if self.bar is not None:
            self.bar.update(n)
            if parts:
                self.bar.set_postfix({k: f"{v:.3g}" for k, v in parts.items()}, refresh=False)


def make_config(method: str, strict: bool = False, **overrides: Any) -> SynthConfig:
    """The method's default config with overrides (None values ignored); with `strict`, an option the method does not
    have is an error naming the method (otherwise it is skipped)."""
    cls = SYNTHESIZERS.get(method).config_cls
    valid = {f.name for f in dataclasses.fields(cls)}
    given = {k: v for k, v in overrides.items() if v is not None}
    foreign = sorted(k for k in given if k not in valid)
    if strict and foreign:
        raise DatafreeError(f"{foreign[0]} is not an option of method {method!r} (its options: "
                            f"{', '.join(sorted(n for n in valid if n not in ('num', 'seed')))})", foreign[0])
    return cls(**{k: v for k, v in given.items() if k in valid})


def synthesize(teacher: nn.Module, method: str, config: Optional[SynthConfig] = None, out: Optional[str] = None,
               progress: bool = True, overwrite: bool = False, student: Optional[nn.Module] = None) -> TensorData:
    """Make synthetic samples from `teacher` with `method` (and `student` if the method uses one); with `out`, store (and resume) a SyntheticSet there."""
    cls = SYNTHESIZERS.get(method)
    cfg = config if config is not None else cls.config_cls()
    if cls.needs_student and student is None:
        raise DatafreeError(f"method {method!r} needs a student model; use `datafree distill --method {method}` "
                            "(it synthesizes with the current student in the loop) or pass student=")
    if cls.needs_bn:
        from ..models.bn_hooks import require_bn

        require_bn(teacher, method)
    spec = input_spec_of(teacher)
    rank, world = parallel.rank(), parallel.world_size()
    with frozen_eval(teacher), (frozen_eval(student) if student is not None else contextlib.nullcontext()):
        synth = cls(teacher, cfg, student)
        n_shards = math.ceil(cfg.num / cfg.batch_size)
        # under torchrun, shard i is made by rank i mod N with its per-shard seed, so the set is the same for any N; a
        # stateful method (a generator trained across shards) runs on rank 0 alone
        stateful = bool(synth.state_dict())
        mine = (lambda i: rank == 0) if stateful else (lambda i: i % world == rank)
        if stateful and world > 1 and rank == 0 and progress:
            print(f"note: {method} trains one generator across all shards, so rank 0 makes the whole set and the "
                  f"other {world - 1} rank(s) wait", file=sys.stderr, flush=True)
        writer = _open_store(out, method, cfg, teacher, student, overwrite) if out is not None else None
        done = writer.done_shards() if writer is not None else set()
        todo = [i for i in range(n_shards) if i not in done and mine(i)]
        state_file = Path(out) / SYNTH_STATE if out is not None else None
        if state_file is not None and done and state_file.exists() and (rank == 0 or not stateful):
            _restore(synth, state_file, method)
        per_batch = getattr(cfg, "iterations", 0) if cls.iterative else 1
        bar = None
        if progress and todo and rank == 0:
            from tqdm.auto import tqdm

            bar = tqdm(total=synth.work_units(len(todo)), desc=f"synthesize {method}", unit="it",
                       dynamic_ncols=True, leave=False, disable=None)
        step = StepCallback(bar)
        xs, ys, ls = [], [], []
        try:
            for i in todo:
                n = min(cfg.batch_size, cfg.num - i * cfg.batch_size)
                ts = time.time()
                x, y, logits = _shard(synth, teacher, i, n, step)
                if writer is not None:
                    state = synth.state_dict()
                    if state and state_file is not None:  # before the shard: a shard on disk implies its state
                        save_atomic(state, state_file)
                    writer.write_shard(i, x, y, logits, extra=dict(step.last, seconds=round(time.time() - ts, 3)))
                else:
                    xs.append(x.cpu()), ys.append(y.cpu()), ls.append(logits.cpu())
        finally:
            synth.close()
            if bar is not None:
                bar.close()
    if writer is None:
        return _gathered(todo, xs, ys, ls, stateful, method)
    return _finished(writer, cfg, per_batch, spec)


def _open_store(out: str, method: str, cfg: SynthConfig, teacher: nn.Module, student: Optional[nn.Module],
                overwrite: bool) -> SyntheticSetWriter:
    """The set's writer: rank 0 checks the directory's identity and owns the manifest; the other ranks follow."""
    manifest = {"method": method, "config": cfg.to_dict(), "seed": cfg.seed, "num": cfg.num,
                "shard_size": cfg.batch_size, "teacher_fingerprint": fingerprint(teacher),
                "teacher": record_of(teacher).source or None, "input_spec": input_spec_of(teacher).to_dict(),
                "student_fingerprint": fingerprint(student) if student is not None else None,
                "library_version": __version__}
    writer = None
    if parallel.rank() == 0:
        defaults = SYNTHESIZERS.get(method).config_cls().to_dict()
        writer = SyntheticSetWriter(out, manifest, overwrite=overwrite, config_defaults=defaults)
    parallel.barrier()
    return writer if writer is not None else SyntheticSetWriter(out, manifest, follower=True)


def _restore(synth: Synthesizer, state_file: Path, method: str) -> None:
    """Load a resumed synthesizer's state (a generator trained across shards)."""
    state = load_tensors(state_file, "is a corrupt or truncated synthesizer state", "delete the directory or pass --overwrite")
    try:
        synth.load_state_dict(state)
    except MISFIT_ERRORS as e:
        raise DatafreeError(f"{state_file} does not hold the state of this {method} synthesizer "
                            f"({type(e).__name__}: {first_line(e, 100)}); delete the directory or pass --overwrite") from None


def _shard(synth: Synthesizer, teacher: nn.Module, i: int, n: int, step: StepCallback
           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Shard i's n samples, labels and teacher logits, from its own seed; NaN or infinite values are refused."""
    cfg = synth.cfg
    gen = torch.Generator().manual_seed(derived_seed(cfg.seed, "shard", i))
    y = synth.labels(i * cfg.batch_size, n)
    x = synth.make_batch(y, gen, step)
    with torch.no_grad():
        logits = teacher(x)
    if not (torch.isfinite(x).all() and torch.isfinite(logits).all()):
        raise DatafreeError(f"shard {i}: the {'samples' if not torch.isfinite(x).all() else 'model outputs'} "
                            "are NaN or infinite, so no set is written; check the model's weights (NaN?) "
                            "and the synthesis settings (a lower --lr)")
    if not synth.class_conditional:
        y = logits.argmax(1)
    return x, y, logits


def _gathered(todo: list[int], xs: list, ys: list, ls: list, stateful: bool, method: str) -> TensorData:
    """The set in memory; under torchrun every rank gets the whole set, in shard order."""
    world = parallel.world_size()
    if world > 1 and not stateful:
        parts = parallel.gather({i: (x, y, l) for i, x, y, l in zip(todo, xs, ys, ls)})
        merged = {k: v for p in parts for k, v in p.items()}
        xs, ys, ls = ([merged[i][j] for i in sorted(merged)] for j in range(3))
    elif world > 1:  # a stateful method ran on rank 0 alone
        xs, ys, ls = parallel.gather((xs, ys, ls))[0]
    return TensorData(torch.cat(xs), torch.cat(ys), torch.cat(ls), name=f"synthetic:{method}")


def _finished(writer: SyntheticSetWriter, cfg: SynthConfig, per_batch: int, spec: InputSpec) -> TensorData:
    """Close the stored set (the lead merges every rank's shard statistics) and read it back; rank 0 draws the grid."""
    followers = parallel.gather(writer.manifest.get("shard_stats", {}) if not writer.lead else {})
    if writer.lead:
        for st in followers:
            writer.merge_stats(st)
        stats = writer.manifest.get("shard_stats", {})
        writer.finish(seconds=round(sum(v.get("seconds", 0.0) for v in stats.values()), 2),
                      image_iterations=cfg.num * max(1, per_batch), world_size=parallel.world_size())
    parallel.barrier()  # the followers read the set once the lead has marked it complete
    s = SyntheticSet(writer.dir)
    if parallel.rank() == 0:
        save_grid(s.data.x, spec, f"{writer.dir}/grid.png", labels=s.data.y)
    return s.data

