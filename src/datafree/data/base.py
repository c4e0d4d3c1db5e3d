"""The one data abstraction: normalized input tensors with optional labels and teacher logits."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Optional

import numpy as np
import torch
import torch.nn.functional as F

from ..core.errors import DatafreeError
from ..models.spec import InputSpec


@dataclass
class TensorData:
    """Inputs `x` (N, C, H, W) in the model's normalized space, optional labels and teacher logits."""

    x: torch.Tensor
    y: Optional[torch.Tensor] = None
    logits: Optional[torch.Tensor] = None
    name: str = "data"

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def subset(self, n: Optional[int], seed: int = 0) -> "TensorData":
        """A random subset of n items (all of them if n is None or >= len)."""
        if n is not None and n < 1:
            raise DatafreeError(f"the number of samples to use must be >= 1, got {n} (--num)")
        if n is None or n >= len(self):
            return self
        idx = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))[:n].sort().values
        return TensorData(self.x[idx], None if self.y is None else self.y[idx],
                          None if self.logits is None else self.logits[idx], self.name)

    def only_classes(self, classes: "list[int] | tuple[int, ...]") -> "TensorData":
        """The items whose label is in `classes` (requires labels)."""
        if self.y is None:
            raise DatafreeError(f"{self.name} has no labels; give a labelled dataset spec")
        m = torch.isin(self.y, torch.tensor(list(classes), dtype=self.y.dtype))
        return TensorData(self.x[m], self.y[m], None if self.logits is None else self.logits[m], self.name)

    def batches(self, batch_size: int, shuffle: bool = False, seed: int = 0, drop_last: bool = False) -> Iterator[torch.Tensor]:
        """Yield input batches (labels are not needed by compressors)."""
        for idx in self.index_batches(batch_size, shuffle, seed, drop_last):
            yield self.x[idx]

    def labeled_batches(self, batch_size: int, shuffle: bool = False, seed: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield (inputs, labels) batches; requires labels."""
        if self.y is None:
            raise ValueError(f"{self.name} has no labels")
        for idx in self.index_batches(batch_size, shuffle, seed, False):
            yield self.x[idx], self.y[idx]

    def index_batches(self, batch_size: int, shuffle: bool, seed: int, drop_last: bool) -> Iterator[torch.Tensor]:
        n = len(self)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)) if shuffle else torch.arange(n)
        stop = n - n % batch_size if drop_last and n >= batch_size else n
        for i in range(0, stop, batch_size):
            yield order[i:i + batch_size]


def concat_data(parts: list[TensorData], name: str = "concat") -> TensorData:
    """One TensorData holding the items of `parts` in order (labels/logits kept only if every part has them)."""
    ys = [p.y for p in parts]
    ls = [p.logits for p in parts]
    return TensorData(torch.cat([p.x for p in parts]), None if any(y is None for y in ys) else torch.cat(ys),  # type: ignore[misc]
                      None if any(v is None for v in ls) else torch.cat(ls), name=name)  # type: ignore[misc]


def images_to_tensor(images: np.ndarray, spec: InputSpec) -> torch.Tensor:
    """uint8 images (N,H,W) or (N,H,W,C) -> float tensor normalized for `spec` (channels and size adapted)."""
    x = torch.from_numpy(np.array(images, copy=not images.flags.writeable or not images.flags.c_contiguous))
    if x.ndim == 3:
        x = x.unsqueeze(-1)
    x = x.permute(0, 3, 1, 2).float().div_(255.0)
    c, h, w = spec.shape
    if x.shape[1] != c:
        if x.shape[1] == 1:
            x = x.expand(-1, c, -1, -1)
        elif c == 1:
            x = (0.299 * x[:, :1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])
        else:
            raise DatafreeError(f"cannot map {x.shape[1]} image channels to {c} model channels")
    if tuple(x.shape[2:]) != (h, w):
        x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
    return spec.normalize(x.contiguous())
