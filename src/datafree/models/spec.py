"""The input spec a model carries: shape, normalization and number of classes."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from ..core.errors import DatafreeError

CIFAR_MEAN = (0.485, 0.456, 0.406)  # ImageNet statistics, as used by the shared CIFAR ResNet checkpoints
CIFAR_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class InputSpec:
    """What a model expects: (C, H, W), per-channel mean/std of its normalization, class count."""

    shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    num_classes: int

    def __post_init__(self) -> None:
        if len(self.shape) != 3 or any(int(s) <= 0 for s in self.shape):
            raise DatafreeError(f"input shape must be (C, H, W) with positive sizes, got {self.shape}")
        c = self.shape[0]
        if len(self.mean) != c or len(self.std) != c:
            raise DatafreeError(f"mean/std need {c} values for {c} channels, got {self.mean}, {self.std}")
        import math

        if not all(math.isfinite(float(v)) for v in (*self.mean, *self.std)):
            raise DatafreeError(f"mean and std must be finite numbers, got mean {self.mean}, std {self.std}")
        if any(float(v) <= 0 for v in self.std):
            raise DatafreeError(f"std must be > 0 for every channel (inputs are divided by it), got {self.std}")
        if int(self.num_classes) < 1:
            raise DatafreeError(f"num_classes must be >= 1, got {self.num_classes}")

    def normalize(self, x01: torch.Tensor) -> torch.Tensor:
        """Map images in [0, 1] (N, C, H, W) to the model's normalized space."""
        m = torch.tensor(self.mean, dtype=x01.dtype, device=x01.device).view(1, -1, 1, 1)
        s = torch.tensor(self.std, dtype=x01.dtype, device=x01.device).view(1, -1, 1, 1)
        return (x01 - m) / s

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """Map normalized inputs back to [0, 1] pixel space (not clamped)."""
        m = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        s = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        return x * s + m

    def pixel_bounds(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel (low, high) of valid normalized pixels, shaped (1, C, 1, 1)."""
        m = torch.tensor(self.mean).view(1, -1, 1, 1)
        s = torch.tensor(self.std).view(1, -1, 1, 1)
        return (0 - m) / s, (1 - m) / s

    def to_dict(self) -> dict:
        """JSON-ready form."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "InputSpec":
        """Inverse of to_dict."""
        return cls(tuple(d["shape"]), tuple(d["mean"]), tuple(d["std"]), int(d["num_classes"]))


CIFAR10_SPEC = InputSpec((3, 32, 32), CIFAR_MEAN, CIFAR_STD, 10)
MNIST_SPEC = InputSpec((1, 28, 28), (0.1307,), (0.3081,), 10)
DIGITS_SPEC = InputSpec((1, 8, 8), (0.3,), (0.38,), 10)
