"""The accuracy drop of a compressed model, estimated without data: features of teacher vs compressed outputs on held-out
synthetic samples (and mixtures of them), mapped to a top-1 drop with an interval by a curve fitted on CIFAR-10 rows."""
from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..core.errors import DatafreeError
from ..core.utils import frozen_eval, model_device
from ..data.base import TensorData
from ..kd.sources import LARGE_IMAGE  # the held-out set takes its large-image budget where on-the-fly synthesis does
from ..models.bn_hooks import bn_layers
from ..models.loading import input_spec_of

HELD_OUT = {"method": "bn-stats", "num": 64, "iterations": 100}  # 32x32 ResNet-20: ~13 s on 2 cores
HELD_OUT_LARGE = {"num": 6, "iterations": 100, "low_res": 0.75}  # 224 px EfficientNet-Lite0: ~16 s on 2 cores
NUM_MIX = {False: 256, True: 64}  # mixtures of held-out pairs (large images: fewer)
SEED_OFFSET = 104_729  # the held-out set's seed: never the calibration source's own


@dataclasses.dataclass(frozen=True)
class DropMapping:
    """feature -> top-1 drop: log(drop + 1) = polynomial(log feature), made non-decreasing; the interval adds the
    residual quantiles of the fit's leave-one-model-out predictions (log space)."""

    feature: str
    coef: tuple[float, ...]  # numpy.polyfit order (highest power first) in x = log(feature)
    x_range: tuple[float, float]  # log(feature) seen in the fit
    resid: tuple[float, float]  # lower / upper residual quantile (log space)
    fitted_on: str  # which rows

    def _curve(self, x: float) -> float:
        """The fitted polynomial made non-decreasing on the fitted range (its running maximum), flat outside."""
        lo, hi = self.x_range
        x = min(max(x, lo), hi)
        grid = [lo + (x - lo) * i / 64 for i in range(65)]
        return max(sum(c * g ** (len(self.coef) - 1 - k) for k, c in enumerate(self.coef)) for g in grid)

    def __call__(self, value: float) -> dict[str, Any]:
        """The estimate for one feature value: drop, interval (lo, hi) in points and whether it lies past the fit."""
        x = math.log(max(value, 1e-6))
        y = self._curve(x)
        out = {"drop": math.exp(y) - 1, "lo": math.exp(y + self.resid[0]) - 1, "hi": math.exp(y + self.resid[1]) - 1}
        out = {k: round(max(v, 0.0), 2) for k, v in out.items()}
        out["beyond_fit"] = x > self.x_range[1]
        return out


# Fitted by `python -m benchmarks.estimate` on CIFAR-10 rows only (the fit's rows and its judged rows are listed in
# benchmarks/results/estimate.json, whose "mapping" entry these numbers must equal: tests/test_estimate.py checks it).
MAPPING = DropMapping(feature="kl", coef=(0.1223, 0.9769, 2.0269), x_range=(-5.206, 1.503),
                      resid=(-0.507, 0.562), fitted_on="99 CIFAR-10 rows of resnet20, resnet32, resnet44")


def held_out_config(teacher: nn.Module, seed: int = 0) -> tuple[str, Any]:
    """The synthesis settings of the held-out set: bn-stats (inception for a model without BatchNorm), a seed apart
    from every calibration seed, and a budget of about a tenth of the default on-the-fly synthesis."""
    from ..synth.base import make_config

    spec = input_spec_of(teacher)
    method = HELD_OUT["method"] if bn_layers(teacher) else "inception"
    over: dict[str, Any] = {"num": HELD_OUT["num"], "iterations": HELD_OUT["iterations"]}
    if spec.shape[1] * spec.shape[2] >= LARGE_IMAGE:
        over.update(HELD_OUT_LARGE)
    cfg = make_config(method, seed=seed + SEED_OFFSET)
    names = {f.name for f in dataclasses.fields(cfg)}
    return method, cfg.replace(**{k: v for k, v in over.items() if k in names})


def held_out_set(teacher: nn.Module, seed: int = 0, progress: bool = False) -> TensorData:
    """Synthetic samples of `teacher` that no calibration or fine-tuning run uses (their own seed)."""
    from ..synth.base import synthesize

    method, cfg = held_out_config(teacher, seed)
    data = synthesize(teacher, method, cfg, progress=progress)
    data.name = f"held-out {method} x{len(data)} (seed {cfg.seed})"
    return data


def mixtures(x: torch.Tensor, n: int, seed: int = 0) -> torch.Tensor:
    """`n` convex combinations λ·x_i + (1-λ)·x_j of random pairs, λ ~ U(0, 1): inputs between the samples' classes."""
    g = torch.Generator().manual_seed(seed)
    i = torch.randint(len(x), (n,), generator=g)
    j = torch.randint(len(x), (n,), generator=g)
    lam = torch.rand(n, *([1] * (x.dim() - 1)), generator=g)
    return lam * x[i] + (1 - lam) * x[j]


@torch.no_grad()
def _logits(model: nn.Module, x: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    dev = model_device(model)
    with frozen_eval(model):
        return torch.cat([model(b.to(dev)).float().cpu() for b in x.split(batch_size)])


def drop_features(teacher: nn.Module, student: nn.Module, held: TensorData, seed: int = 0) -> dict[str, float]:
    """Teacher vs student on the held-out samples and their mixtures: `rel` (squared logit error over the teacher's
    logit variance), `kl` (KL(teacher || student), nats), `disagreement` (percent of top-1 changes), `n` points."""
    large = held.x[0, 0].numel() >= LARGE_IMAGE
    x = torch.cat([held.x, mixtures(held.x, NUM_MIX[large], seed)])
    zt, zs = _logits(teacher, x), _logits(student, x)
    if zt.shape != zs.shape:
        raise DatafreeError(f"the compressed model has {zs.shape[1]} outputs and its teacher {zt.shape[1]}; "
                            "the estimate compares the two on the same classes")
    if not (torch.isfinite(zs).all() and torch.isfinite(zt).all()):
        raise DatafreeError("the compressed model gives non-finite outputs on the held-out samples; it is broken — "
                            "recompress it (check the calibration data)")
    kl = (F.softmax(zt, 1) * (F.log_softmax(zt, 1) - F.log_softmax(zs, 1))).sum(1).mean()
    rel = ((zs - zt) ** 2).mean() / zt.var(1).mean().clamp_min(1e-12)
    dis = (zt.argmax(1) != zs.argmax(1)).float().mean() * 100
    return {"rel": float(rel), "kl": float(kl), "disagreement": float(dis), "n": int(len(x))}


def estimate_drop(teacher: nn.Module, student: nn.Module, held: Optional[TensorData] = None, seed: int = 0,
                  progress: bool = False, mapping: DropMapping = MAPPING) -> dict[str, Any]:
    """Estimated top-1 drop of `student` against `teacher` (points, with an interval) from held-out synthetic samples
    (synthesized here when not given), the features it rests on and the seconds it took."""
    t0 = time.time()
    if held is None:
        held = held_out_set(teacher, seed, progress)
    feats = drop_features(teacher, student, held, seed)
    est = mapping(feats[mapping.feature])
    return {**est, "features": {k: round(v, 5) if isinstance(v, float) else v for k, v in feats.items()},
            "held_out": held.name, "seconds": round(time.time() - t0, 2), "validated": held.name.startswith("held-out bn-stats")}


def estimate_line(est: dict[str, Any]) -> str:
    """One line for a person: the estimate, its interval and what it rests on."""
    more = "at least " if est.get("beyond_fit") else ""
    warn = "" if est.get("validated", True) else " (model without BatchNorm: inception samples, not validated)"
    return (f"estimated top-1 drop {more}{est['drop']:.1f} pt (interval {est['lo']:.1f}-{est['hi']:.1f}) from "
            f"{est['features']['n']} held-out synthetic points, agreement {100 - est['features']['disagreement']:.1f}%"
            f"{warn} [{est['seconds']:.0f} s]")
