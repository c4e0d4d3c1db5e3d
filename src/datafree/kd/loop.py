"""The one knowledge-distillation loop (quantized fine-tuning, student training, pruning all use it)."""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Iterable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..core import parallel
from ..core.config import Config, opt
from ..core.errors import DatafreeError
from ..core.seeds import derived_seed
from ..core.utils import frozen_eval, model_device, top1
from ..data.augment import augment_batch, mix_batch  # noqa: F401  (re-exported)
from ..data.base import TensorData
from ..data.source import DataSource, SourceLike, as_source
from ..models.loading import head_of


@dataclasses.dataclass
class KDConfig(Config):
    """Distillation settings: KL(teacher || student) at temperature T, optional feature term."""

    steps: int = opt(500, "KD steps (one batch each)", lo=0)
    batch_size: int = opt(64, "distillation batch size", flag="--kd-batch-size", lo=1)
    lr: float = opt(1e-4, "learning rate (cosine schedule over all steps)", flag="--kd-lr", lo=0, lo_open=True)
    weight_decay: float = opt(0.0, "weight decay", flag="--kd-weight-decay", lo=0)
    optimizer: str = opt("adam", "optimizer: adam, or sgd (Nesterov momentum)", flag="--kd-optimizer", choices=("adam", "sgd"))
    momentum: float = opt(0.9, "SGD momentum")
    temperature: float = opt(4.0, "distillation temperature", flag="--kd-temperature", lo=0, lo_open=True)
    feature_weight: float = opt(0.0, "weight of the MSE between inputs of same-named layers in student and teacher")
    feature_layers: tuple[str, ...] = opt((), "layer names for the feature term; empty = the classifier head")
    augment: bool = opt(True, "no crop/flip of the samples", flag="--no-augment", negate=True)
    flip: bool = opt(True, "no horizontal flips (digits, text)", flag="--no-flip", negate=True)
    mixup: float = opt(0.0, "mix random pairs of samples (weight ~ Beta(a, a)); the teacher labels each mixture, so a "
                            "small pool gives many distinct inputs; 0 = off", flag="--mixup", lo=0)
    freeze_bn: bool = opt(True, "keep the student's BN statistics fixed (for a pretrained student; needed with Gaussian "
                                "samples)", flag="--freeze-bn")
    val_every: int = opt(100, "steps between validations", flag="--val-every", lo=1)
    bf16: bool = opt(False, "run the teacher's forward under bfloat16 autocast (faster on CPUs with AVX512-BF16 or AMX; "
                            "the student trains in float32)", flag="--kd-bf16")
    channels_last: bool = opt(False, "channels-last memory format for teacher and student (faster on some CPUs)",
                              flag="--channels-last")
    seed: int = opt(0, "random seed")

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "KDConfig":
        """A named preset (`qat`, `student`, `prune`, `continual`) with overrides; the CLI's defaults are these."""
        if name not in KD_PRESETS:
            raise DatafreeError(f"unknown KD preset {name!r}; valid: {', '.join(KD_PRESETS)}")
        return dataclasses.replace(KD_PRESETS[name], **overrides)


KD_PRESETS: dict[str, KDConfig] = {
    # quantization-aware fine-tuning of a calibrated model: small lr, folded BN never updates
    "qat": KDConfig(lr=1e-4, temperature=4.0, batch_size=64),
    # a student from scratch: larger lr and batch, weight decay, BN trained, mixup over a small pool
    "student": KDConfig(lr=1e-3, weight_decay=5e-4, temperature=3.0, batch_size=128, freeze_bn=False, mixup=1.0,
                        val_every=200),
    # recovering a pruned model
    "prune": KDConfig(lr=5e-4, temperature=4.0, batch_size=64, freeze_bn=False, val_every=200),
    # Structured Multi-Hashing (`hash`): all weights new, a larger step; no mixup (measured on digits: 25 % of the
    # variables, 300 steps, paper init: 97.8 % at lr 3e-3 without mixup, 76.7 % at the student preset)
    "hash": KDConfig(lr=3e-3, weight_decay=0.0, temperature=3.0, batch_size=128, freeze_bn=False, mixup=0.0,
                     val_every=200),
    # class-incremental learning (`extend`)
    "continual": KDConfig(steps=1000, lr=1e-3, temperature=2.0, batch_size=64, freeze_bn=False),
}


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """T² · KL(softmax(t/T) || softmax(s/T)), batch mean."""
    t = temperature
    return F.kl_div(F.log_softmax(student_logits / t, 1), F.log_softmax(teacher_logits / t, 1),
                    reduction="batchmean", log_target=True) * (t * t)


class _InputTap:
    """Records the input of named submodules on each forward."""

    def __init__(self, model: nn.Module, names: list[str]) -> None:
        self.feats: dict[str, torch.Tensor] = {}
        mods = dict(model.named_modules())
        missing = [n for n in names if n not in mods]
        if missing:
            raise DatafreeError(f"feature layer(s) {missing} not found in the model; valid names come from model.named_modules()")
        self.handles = [mods[n].register_forward_pre_hook(self._hook(n)) for n in names]

    def _hook(self, name: str):
        def hook(mod, inp):
            self.feats[name] = inp[0]
        return hook

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def _freeze_bn(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


LossFn = Callable[[torch.Tensor, torch.Tensor, Optional[torch.Tensor]], torch.Tensor]
Evaluator = Callable[[nn.Module], float]  # model -> top-1 in percent on held-out data


def accuracy_evaluator(val: TensorData) -> Evaluator:
    """An evaluator reporting top-1 (percent) on a labelled set."""
    return lambda model: top1(model, val)


class Distiller:
    """The one KD loop: pulls batches from a DataSource, advances it on its own schedule, one optimizer and cosine
    schedule over `cfg.steps`, run in pieces; `state_dict` holds the loop's and the source's state."""

    def __init__(self, student: nn.Module, teacher: nn.Module, config: Optional[KDConfig] = None,
                 params: Optional[Iterable[nn.Parameter]] = None, loss_fn: Optional[LossFn] = None,
                 source: Optional[SourceLike] = None, evaluator: Optional[Evaluator] = None) -> None:
        self.cfg = cfg = config or KDConfig()
        cfg.verify()
        self.student, self.teacher = student, teacher
        self._teacher_run = teacher  # the forward used for KD targets (a channels-last working copy if asked)
        if cfg.channels_last and any(p.dim() == 4 for p in teacher.parameters()):
            import copy

            self._teacher_run = copy.deepcopy(teacher).to(memory_format=torch.channels_last)
            student.to(memory_format=torch.channels_last)
        self.loss_fn = loss_fn  # (student_logits, teacher_logits, labels or None) -> loss; default: kd_loss at T
        self.evaluator = evaluator
        self.device = model_device(student)
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.source: Optional[DataSource] = None if source is None else as_source(source, self._source_seed())
        plist = [p for p in (params if params is not None else student.parameters()) if p.requires_grad]
        if not plist:
            raise DatafreeError("the student has no trainable parameters")
        if cfg.optimizer == "sgd":
            self.opt: torch.optim.Optimizer = torch.optim.SGD(plist, lr=cfg.lr, momentum=cfg.momentum,
                                                              weight_decay=cfg.weight_decay, nesterov=True)
        else:
            self.opt = torch.optim.Adam(plist, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.sched = torch.optim.lr_scheduler.CosineAnnealingLR(self.opt, max(1, cfg.steps))
        self._forward: nn.Module = student  # under torchrun: DistributedDataParallel around the student
        if parallel.active():
            from torch.nn.parallel import DistributedDataParallel

            dev = self.device
            self._forward = DistributedDataParallel(student, device_ids=[dev] if dev.type == "cuda" else None,
                                                     static_graph=True)
        self.step = 0
        self.elapsed = 0.0  # seconds spent in run() (source updates included), over all pieces of the run
        self.history: list[dict] = []

    def _source_seed(self) -> int:
        return derived_seed(self.cfg.seed, "stream")

    def state_dict(self) -> dict:
        """Optimizer, schedule, RNG, counters and the source's state (the student's weights are saved by the caller)."""
        return {"opt": self.opt.state_dict(), "sched": self.sched.state_dict(), "gen": self.gen.get_state(),
                "step": self.step, "history": self.history, "elapsed": self.elapsed,
                "source": self.source.state_dict() if self.source is not None else None}

    def load_state_dict(self, state: dict) -> None:
        """Restore what `state_dict` saved."""
        if "source" not in state:
            raise DatafreeError("this checkpoint was written by an older datafree (no data-source state); "
                                "pass --overwrite to start over")
        self.opt.load_state_dict(state["opt"])
        self.sched.load_state_dict(state["sched"])
        self.gen.set_state(state["gen"])
        self.step, self.history = int(state["step"]), list(state["history"])
        self.elapsed = float(state.get("elapsed", 0.0))
        if state["source"] is not None and self.source is not None:
            self.source.load_state_dict(state["source"])

    def teacher_logits(self, xb: torch.Tensor) -> torch.Tensor:
        """The teacher's float32 logits on a batch (bf16 autocast and channels-last as configured)."""
        with torch.no_grad(), torch.autocast(device_type=xb.device.type, dtype=torch.bfloat16, enabled=self.cfg.bf16):
            return self._teacher_run(xb).float()

    def _loss(self, xb: torch.Tensor, yb: Optional[torch.Tensor], taps, t_logits: Optional[torch.Tensor] = None) -> torch.Tensor:
        cfg = self.cfg
        if t_logits is None:
            t_logits = self.teacher_logits(xb)
        s_logits = self._forward(xb)
        if self.loss_fn is not None:
            loss = self.loss_fn(s_logits, t_logits, yb)
        else:
            loss = kd_loss(s_logits, t_logits, cfg.temperature)
        if taps is not None:
            feat = sum(F.mse_loss(taps[0].feats[n], taps[1].feats[n]) for n in taps[0].feats)
            loss = loss + cfg.feature_weight * feat
        return loss

    def _train_step(self, src: Any, taps: Any, dist_on: bool, on_update: Optional[Callable[[dict], None]]
                    ) -> tuple[float, dict]:
        """One step: the source's update, a batch (augmented, this rank's slice), the loss, the optimizer and the
        schedule; returns the loss (the full batch's under torchrun) and what the source update did."""
        cfg, student = self.cfg, self.student
        student.eval()
        if dist_on:  # BN statistics: each rank updated them on its own slice; rank 0's are the model's
            parallel.broadcast_(student.buffers())
        info = src.update(self.teacher, student, self.step)
        if info and on_update is not None:
            on_update(info)
        student.train()
        if cfg.freeze_bn:
            _freeze_bn(student)
        batch = src.sample(cfg.batch_size, self.gen)
        xb = batch.x.to(self.device)
        yb = None if batch.y is None else batch.y.to(self.device)
        # the teacher's logits come with the batch when the source computed them on these very inputs
        reuse = getattr(src, "teacher_logits", False) and batch.logits is not None and taps is None
        t_logits = batch.logits.to(self.device) if reuse else None
        if cfg.augment:
            xb, t_logits = augment_batch(xb, self.gen, cfg.flip), None
        if cfg.mixup > 0:
            xb, t_logits = mix_batch(xb, self.gen, cfg.mixup), None
        full = len(xb)
        if dist_on:  # this rank's slice; weighted so the averaged gradient is the full batch's mean
            xb = parallel.split(xb)
            yb = None if yb is None else parallel.split(yb)
            t_logits = None if t_logits is None else parallel.split(t_logits)
        if cfg.channels_last and xb.dim() == 4:
            xb = xb.contiguous(memory_format=torch.channels_last)
        loss = self._loss(xb, yb, taps, t_logits)
        if dist_on:
            loss = loss * (len(xb) * parallel.world_size() / full)
            shown = parallel.all_sum(loss.detach()) / parallel.world_size()
        else:
            shown = loss.detach()
        if not torch.isfinite(shown):
            raise DatafreeError(f"distillation loss became {shown.item()} at step {self.step}; lower the lr (now {cfg.lr})")
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        if self.step < cfg.steps:
            self.sched.step()
        self.step += 1
        return shown.item(), info

    def run(self, source: Optional[SourceLike] = None, steps: Optional[int] = None, val: Optional[TensorData] = None,
            progress: bool = True, on_step: Optional[Callable[[int, float], None]] = None,
            on_update: Optional[Callable[[dict], None]] = None, deadline: Optional[float] = None) -> list[dict]:
        """Train the student for `steps` more steps (default: to `cfg.steps`) on augmented batches of the source; returns
        those steps' records. With `deadline` (a time.time() value) it stops at the first step that ends past it and
        validates there. `val` (labelled data) is a shortcut for an accuracy evaluator; `on_update` sees what each
        source update did. Under torchrun every rank draws the same batch (same RNG, same source state), trains on its
        own slice of it, and DistributedDataParallel averages the gradients; rank 0 validates."""
        cfg = self.cfg
        dist_on = parallel.active()
        progress = progress and parallel.is_main()
        if source is not None and (self.source is None or not (source is self.source or getattr(self.source, "data", None) is source)):
            self.source = as_source(source, self._source_seed())
        if self.source is None:
            raise DatafreeError("the distiller has no data source")
        src = self.source
        evaluator = accuracy_evaluator(val) if val is not None else self.evaluator
        if not parallel.is_main():
            evaluator = None
        n_steps = cfg.steps - self.step if steps is None else steps
        stop = self.step + max(0, n_steps)
        new: list[dict] = []
        bar = None
        if progress and n_steps > 0:
            from tqdm.auto import tqdm

            bar = tqdm(total=n_steps, desc="distill", unit="step", leave=False, dynamic_ncols=True, disable=None)
        student, last_val = self.student, None
        was = student.training
        taps = None
        if cfg.feature_weight > 0:
            names = list(cfg.feature_layers) or [head_of(self.teacher)]
            taps = (_InputTap(student, names), _InputTap(self._teacher_run, names))
        t_run = time.time() - self.elapsed

        def validate(rec: dict) -> float:  # the step's record gets the accuracy and the run's seconds so far
            student.eval()
            rec["val_top1"] = evaluator(student)  # type: ignore[misc]
            rec["seconds"] = round(time.time() - t_run, 2)
            return rec["val_top1"]

        try:
            with frozen_eval(self.teacher):
                while self.step < stop:
                    if _past(deadline, dist_on):
                        if evaluator is not None and new and "val_top1" not in new[-1]:
                            validate(new[-1])
                        break
                    shown, info = self._train_step(src, taps, dist_on, on_update)
                    rec: dict[str, Any] = {"step": self.step, "loss": shown}
                    if info:
                        rec["source"] = info
                    if evaluator is not None and (self.step % cfg.val_every == 0 or self.step == stop):
                        last_val = validate(rec)
                    new.append(rec)
                    if on_step is not None:
                        on_step(self.step, rec["loss"])
                    if bar is not None:
                        bar.update(1)
                        post = {"loss": f"{rec['loss']:.4f}"}
                        if last_val is not None:
                            post["val"] = f"{last_val:.2f}"
                        bar.set_postfix(post, refresh=False)
        finally:
            self.elapsed = time.time() - t_run
            if bar is not None:
                bar.close()
            if taps is not None:
                taps[0].remove(), taps[1].remove()
            student.train(was)
        student.eval()
        self.history.extend(new)
        if dist_on:  # every rank leaves with rank 0's BN statistics, and with the same source state (advanced alike)
            parallel.broadcast_(student.buffers())
            parallel.check_in_step(src.state_dict(), "the data source's state")
        return new


def _past(deadline: Optional[float], dist_on: bool) -> bool:
    """Whether the deadline has passed (under torchrun: on any rank, so every rank stops at the same step)."""
    over = deadline is not None and time.time() >= deadline
    if dist_on and deadline is not None:
        over = bool(parallel.all_sum(torch.tensor(float(over))).item() > 0)
    return over


def distill_(student: nn.Module, teacher: nn.Module, data: SourceLike, config: Optional[KDConfig] = None,
             val: Optional[TensorData] = None, params: Optional[Iterable[nn.Parameter]] = None,
             progress: bool = True, on_step: Optional[Callable[[int, float], None]] = None,
             loss_fn: Optional[LossFn] = None) -> list[dict]:
    """Train `student` in place to match `teacher`'s logits on (augmented) batches of `data`; returns a history of losses/val."""
    return Distiller(student, teacher, config, params, loss_fn, source=data).run(val=val, progress=progress, on_step=on_step)
