"""Data as a stream: the DataSource protocol every compressor reads from, and the source over a fixed set."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional, Protocol, Union, runtime_checkable

import torch
import torch.nn as nn

from ..core.errors import DatafreeError
from ..models.spec import InputSpec
from .base import TensorData, concat_data


@dataclass
class Batch:
    """One draw from a source: normalized inputs, optional labels and teacher logits."""

    x: torch.Tensor
    y: Optional[torch.Tensor] = None
    logits: Optional[torch.Tensor] = None


@runtime_checkable
class DataSource(Protocol):
    """What the KD loop and calibration read: draw batches, advance with the models, checkpoint."""

    name: str

    def sample(self, batch_size: int, generator: torch.Generator) -> Batch:
        """The next batch of `batch_size` items."""
        ...

    def update(self, teacher: nn.Module, student: nn.Module, step: int) -> dict:
        """Advance the source before KD step `step` (no-op for a fixed set); returns what it did, for logs."""
        ...

    def state_dict(self) -> dict:
        """Everything needed to resume the stream exactly (tensors, numbers, strings: loadable with weights_only)."""
        ...

    def load_state_dict(self, state: dict) -> None:
        """Restore what `state_dict` saved."""
        ...


class Source:
    """Base with the no-op parts of the protocol; subclasses implement `sample` and their own state."""

    name: str = "source"
    input_spec: Optional[InputSpec] = None
    teacher_logits: bool = False  # batches carry logits of the loop's own teacher on exactly these inputs (reusable)

    def update(self, teacher: nn.Module, student: nn.Module, step: int) -> dict:
        return {}

    def identity(self) -> dict[str, Any]:
        """What distinguishes this stream from another (run checkpoints refuse a different one)."""
        return {"name": self.name}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def __len__(self) -> int:
        """Items currently available (for epoch arithmetic)."""
        raise NotImplementedError


class TensorSource(Source):
    """A fixed set (stored synthetic or real) as a stream: shuffled epochs, no item repeated within an epoch, and the
    position in the epoch is part of the state, so a run in pieces sees exactly what one run sees."""

    def __init__(self, data: TensorData, seed: int = 0, shuffle: bool = True, drop_last: bool = True,
                 input_spec: Optional[InputSpec] = None) -> None:
        if len(data) == 0:
            raise DatafreeError(f"data source {data.name} is empty")
        self.data = data
        self.name = data.name
        self.seed, self.shuffle, self.drop_last = int(seed), shuffle, drop_last
        self.input_spec = input_spec
        self.epoch, self.pos = 0, 0
        self._order: Optional[torch.Tensor] = None
        self._order_key: Optional[tuple[int, int]] = None

    def __len__(self) -> int:
        return len(self.data)

    def identity(self) -> dict[str, Any]:
        return {"data": self.data.name, "n": len(self.data)}

    def _epoch_order(self, batch_size: int) -> torch.Tensor:
        n = len(self.data)
        reps = math.ceil(batch_size / n) if n < batch_size else 1  # a set smaller than a batch is repeated
        key = (self.epoch, reps)
        if self._order_key != key:
            m = n * reps
            if self.shuffle:
                perm = torch.randperm(m, generator=torch.Generator().manual_seed(self.seed + self.epoch))
            else:
                perm = torch.arange(m)
            self._order, self._order_key = perm % n, key
        assert self._order is not None
        return self._order

    def sample(self, batch_size: int, generator: Optional[torch.Generator] = None) -> Batch:
        order = self._epoch_order(batch_size)
        m = len(order)
        stop = m - m % batch_size if self.drop_last else m
        if self.pos >= stop:  # epoch done: the next one has a fresh order
            self.epoch, self.pos = self.epoch + 1, 0
            order = self._epoch_order(batch_size)
        idx = order[self.pos:self.pos + batch_size]
        self.pos += len(idx)
        d = self.data
        return Batch(d.x[idx], None if d.y is None else d.y[idx], None if d.logits is None else d.logits[idx])

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.pos, self.seed = int(state["epoch"]), int(state["pos"]), int(state["seed"])


SourceLike = Union[TensorData, DataSource]


def as_source(data: SourceLike, seed: int = 0) -> DataSource:
    """A DataSource for `data` (a TensorData becomes a TensorSource shuffled with `seed`)."""
    if isinstance(data, TensorData):
        return TensorSource(data, seed=seed)
    if isinstance(data, DataSource):
        return data
    raise DatafreeError(f"expected a TensorData or a DataSource, got {type(data).__name__}")


def draw(data: SourceLike, n: int, seed: int = 0) -> TensorData:
    """`n` items of any source as a TensorData: a random subset of a fixed set, or batches drawn from a stream."""
    if isinstance(data, TensorData):
        return data.subset(n, seed)
    if isinstance(data, TensorSource):
        return data.data.subset(n, seed)
    src = as_source(data)
    gen = torch.Generator().manual_seed(seed)
    parts, got = [], 0
    while got < n:
        b = src.sample(min(256, n - got), gen)
        parts.append(TensorData(b.x.detach().cpu(), None if b.y is None else b.y.cpu(),
                                None if b.logits is None else b.logits.cpu(), src.name))
        got += len(b.x)
    return concat_data(parts, src.name).subset(n, seed)
