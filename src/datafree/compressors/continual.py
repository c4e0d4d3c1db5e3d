"""Data-free continual learning: add classes to a trained classifier with new-class data plus inverted old-class samples."""
from __future__ import annotations

import copy
import dataclasses
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..core.config import Config, opt
from ..core.errors import DatafreeError
from ..core.schema import Schema
from ..core.utils import predict
from ..data.base import TensorData
from ..data.source import SourceLike
from ..kd.loop import Distiller, KDConfig, kd_loss
from ..models.loading import head_of
from ..models.record import record_of
from .base import record_transform, register_compressor

METHODS = ("finetune-new", "lwf", "deepinversion")


@dataclasses.dataclass
class ContinualConfig(Config):
    """How old-class knowledge is kept: `finetune-new` (none), `lwf` (KD on new data), `deepinversion` (KD + CE on inverted old-class samples)."""

    method: str = opt("deepinversion", "how old classes are kept", choices=METHODS)
    kd_weight: float = opt(1.0, "weight of the old-head distillation term", lo=0)
    temperature: float = opt(2.0, "distillation temperature", lo=0, lo_open=True)


def expand_head(model: nn.Module, num_classes: int, seed: int = 0) -> nn.Module:
    """A copy of `model` whose linear classifier has `num_classes` outputs; old rows are copied, new rows initialized
    fresh from `seed` (the same seed gives the same head)."""
    new = copy.deepcopy(model)
    name = head_of(new)
    parent_name, _, attr = name.rpartition(".")
    parent = new.get_submodule(parent_name) if parent_name else new
    old = getattr(parent, attr)
    if not isinstance(old, nn.Linear):
        raise DatafreeError(f"the classifier head {name!r} is not nn.Linear; expand it by hand")
    if num_classes <= old.out_features:
        raise DatafreeError(f"the model already has {old.out_features} outputs; --num-classes must be larger")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = nn.Linear(old.in_features, num_classes, bias=old.bias is not None).to(old.weight.device)
    with torch.no_grad():
        head.weight[: old.out_features] = old.weight
        if old.bias is not None:
            head.bias[: old.out_features] = old.bias
    setattr(parent, attr, head)
    spec = record_of(model).input_spec
    if spec is not None:
        record_of(new).input_spec = dataclasses.replace(spec, num_classes=num_classes)
    return new


def extend_classes(old_model: nn.Module, new_data: TensorData, num_classes: int, config: Optional[ContinualConfig] = None,
                   kd: Optional[KDConfig] = None, synthetic: Optional[TensorData] = None,
                   val: Optional[TensorData] = None, progress: bool = True) -> nn.Module:
    """Model with `num_classes` outputs trained on `new_data` (labels >= old classes) keeping old classes per `config.method`."""
    cfg = config or ContinualConfig()
    cfg.verify()
    kd = kd or KDConfig(steps=1000, batch_size=64, lr=1e-3, freeze_bn=False)
    if new_data.y is None:
        raise DatafreeError("new-class data needs labels")
    student = expand_head(old_model, num_classes, seed=kd.seed)
    n_old = old_model.get_submodule(head_of(old_model)).out_features  # expand_head checked it is nn.Linear
    if int(new_data.y.min()) < n_old or int(new_data.y.max()) >= num_classes:
        raise DatafreeError(f"new-class labels must lie in {n_old}..{num_classes - 1} (the old model has {n_old} classes)")
    data = new_data
    if cfg.method == "deepinversion":
        if synthetic is None or len(synthetic) == 0:
            raise DatafreeError("method deepinversion needs inverted samples of the old classes (synthetic=...)")
        old_labels = synthetic.logits.argmax(1) if synthetic.logits is not None else predict(old_model, synthetic)
        reps = max(1, round(len(new_data) / len(synthetic)))  # as many old-class samples as new-class ones
        data = TensorData(torch.cat([new_data.x] + [synthetic.x] * reps),
                          torch.cat([new_data.y] + [old_labels.to(new_data.y.dtype)] * reps), name="new+inverted")
    keep_old = cfg.method in ("lwf", "deepinversion") and cfg.kd_weight > 0

    def loss_fn(s: torch.Tensor, t: torch.Tensor, y: Optional[torch.Tensor]) -> torch.Tensor:
        assert y is not None
        loss = F.cross_entropy(s, y)
        if keep_old:
            loss = loss + cfg.kd_weight * kd_loss(s[:, :n_old], t, cfg.temperature)
        return loss

    Distiller(student, old_model, kd, loss_fn=loss_fn).run(data, val=val, progress=progress)
    record_of(student).reports["extend"] = {"num_classes": num_classes, "from_classes": n_old, "samples": len(data)}
    return record_transform(student, "extend", cfg, num_classes=num_classes, from_classes=n_old).eval()


def _apply(model: nn.Module, data: Optional[SourceLike], config: ContinualConfig, num_classes: int = 0,
           kd: Optional[KDConfig] = None, synthetic: Optional[TensorData] = None, progress: bool = False,
           **_: object) -> nn.Module:
    if not isinstance(data, TensorData):
        raise DatafreeError("extend needs labelled new-class data (a dataset spec)")
    return extend_classes(model, data, num_classes, config, kd, synthetic, progress=progress)


def _rebuild(model: nn.Module, t: dict, state_dict: dict) -> nn.Module:
    """Grow the head to the extended class count."""
    return expand_head(model, int(t["num_classes"]))


def _check(s: Schema, model: nn.Module, t: dict, field: str) -> None:
    """A stored extend record: the new class count, above the old one."""
    n = s.number(t, "num_classes", field, lo=2)
    old = s.number(t, "from_classes", field, lo=1, required=False)
    if old is not None and old >= n:
        s.fail(f"{field}.num_classes", f"is {n}, not more than from_classes {old}")


register_compressor("extend", ContinualConfig, _apply, _rebuild,
                    "add classes: grow the head, train on new-class data plus inverted old-class samples", _check)


def split_accuracy(model: nn.Module, data: TensorData, old_classes: int) -> dict[str, float]:
    """Top-1 over all classes, and restricted to test images of old (< old_classes) and new classes."""
    assert data.y is not None
    pred = predict(model, data)
    hit = (pred == data.y).float()
    old = data.y < old_classes
    pct = lambda m: round(100.0 * hit[m].mean().item(), 3) if bool(m.any()) else float("nan")  # noqa: E731
    return {"top1_old": pct(old), "top1_new": pct(~old), "top1_all": pct(torch.ones_like(old))}
