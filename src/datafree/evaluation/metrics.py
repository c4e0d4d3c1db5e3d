"""Accuracy, agreement with a teacher, model size and the BN-statistics similarity score."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn

from ..core.errors import DatafreeError
from ..core.utils import frozen_eval, model_device, predict
from ..data.base import TensorData
from ..models.measure import count_flops_params, model_size_bits  # noqa: F401  (part of the metrics API)


def evaluate(model: nn.Module, data: TensorData, teacher: Optional[nn.Module] = None, batch_size: int = 256,
             teacher_pred: Optional[torch.Tensor] = None) -> dict:
    """Top-1 (percent) on labelled data, agreement with `teacher` (or its precomputed predictions), size in bits."""
    if data.y is None:
        raise DatafreeError(f"{data.name} has no labels to evaluate against; give a labelled dataset spec")
    pred = predict(_inference_copy(model, data), data, batch_size)
    out = {"top1": round(100.0 * (pred == data.y).float().mean().item(), 3), "n": len(data),
           "data": data.name, "size_bits": model_size_bits(model)}
    if teacher is not None or teacher_pred is not None:
        tpred = teacher_pred if teacher_pred is not None else predict(_inference_copy(teacher, data), data, batch_size)  # type: ignore[arg-type]
        out["agreement"] = round(100.0 * (pred == tpred).float().mean().item(), 3)
        out["teacher_top1"] = round(100.0 * (tpred == data.y).float().mean().item(), 3)
    return out


@torch.no_grad()
def _inference_copy(model: nn.Module, data: TensorData) -> nn.Module:
    """For large images: a copy with each BatchNorm folded into the conv/linear that feeds it (the same function in
    eval mode, one pass less per layer); the model itself otherwise."""
    import copy

    from ..compressors.quant.prepare import trace_layers
    from ..core.utils import LARGE_INPUT, fold_bn, set_module

    x0 = data.x[:1]
    if x0.dim() != 4 or x0.shape[-1] * x0.shape[-2] < LARGE_INPUT:
        return model
    pairs = [(c, b) for c, b in trace_layers(model, x0.to(model_device(model))) if b]
    if not pairs:
        return model
    m = copy.deepcopy(model).eval()
    for c, b in pairs:
        conv = m.get_submodule(c)
        w, bias = fold_bn(conv.weight, conv.bias, m.get_submodule(b))
        conv.weight, conv.bias = nn.Parameter(w), nn.Parameter(bias)
        set_module(m, b, nn.Identity())
    return m


@torch.no_grad()
def similarity(model: nn.Module, data: TensorData, batch_size: int = 256, form: str = "kl") -> dict:
    """BN-statistics divergence of a data set through `model`: low for data like the training data.

    Per BN layer, the data set's per-channel input mean/variance (over all samples) is compared with the
    stored running statistics by the same loss the bn-stats synthesizer minimizes; `score` is the sum.
    """
    from ..models.bn_hooks import BNStatHooks, bn_loss, require_bn

    require_bn(model, "similarity")
    dev = model_device(model)
    sums: list[list] = []
    with frozen_eval(model), BNStatHooks(model) as hooks:
        sums = [[0.0, 0.0, 0] for _ in hooks.layers]
        for xb in data.batches(batch_size):
            model(xb.to(dev))
            for i in range(len(hooks.layers)):
                m, v = hooks.means[i], hooks.vars[i]
                if m is None:
                    continue
                n = xb.shape[0]
                sums[i][0] = sums[i][0] + m * n
                sums[i][1] = sums[i][1] + (v + m * m) * n
                sums[i][2] += n
        for i, (s1, s2, n) in enumerate(sums):
            mean = s1 / n
            hooks.means[i], hooks.vars[i] = mean, (s2 / n - mean * mean).clamp_min(0)
        total, per = bn_loss(hooks, form)
        names = [n for n, _ in hooks.layers]
    return {"score": total.item(), "layers": {n: p.item() for n, p in zip(names, per)}, "n": len(data), "data": data.name}


SCORES = ("bn", "bn+oh")  # per-batch detector scores


def similarity_per_batch(model: nn.Module, data: TensorData, batch_size: int = 64, seed: int = 0,
                         form: str = "kl", score: str = "bn") -> list[float]:
    """A detector score for each batch of `batch_size` samples (shuffled, last partial batch dropped), high for batches
    unlike the training data: `bn` is the BN-statistics divergence; `bn+oh` adds the batch-mean one-hot loss
    −log max softmax (DAFL's authenticity term; nats like the KL terms), the model's own expectation of confident
    outputs on its training data."""
    from ..models.bn_hooks import BNStatHooks, bn_loss, require_bn
    from ..synth.gen_losses import onehot_loss

    require_bn(model, "similarity")
    if score not in SCORES:
        raise DatafreeError(f"unknown score {score!r}; choose one of {', '.join(SCORES)}")
    if len(data) < batch_size:
        raise DatafreeError(f"{data.name} has {len(data)} samples, fewer than one batch of {batch_size}")
    dev = model_device(model)
    out = []
    with frozen_eval(model), BNStatHooks(model) as hooks, torch.no_grad():
        for xb in data.batches(batch_size, shuffle=True, seed=seed, drop_last=True):
            logits = model(xb.to(dev))
            v = float(bn_loss(hooks, form)[0])
            if score == "bn+oh":
                v += float(onehot_loss(logits.float()))
            out.append(v)
    return out


def teacher_view(data: TensorData, class_conditional: bool = True) -> dict[str, Optional[float]]:
    """How a synthetic set looks to its teacher (stored logits): target agreement %, mean max probability, class balance."""
    if data.logits is None:
        raise DatafreeError("teacher_view needs the teacher logits stored with a synthetic set")
    p = torch.softmax(data.logits.float(), 1)
    pred = p.argmax(1)
    frac = torch.bincount(pred, minlength=p.shape[1]).float() / len(pred)
    nz = frac[frac > 0]
    balance = float(-(nz * nz.log()).sum() / torch.log(torch.tensor(float(p.shape[1]))))  # entropy, 1 = uniform
    return {"target_agreement": round(float((pred == data.y).float().mean()) * 100, 2) if class_conditional else None,
            "mean_max_prob": round(float(p.max(1).values.mean()), 4), "class_balance": round(balance, 4)}


def plot_curves(curves: dict[str, list[tuple[float, float]]], path: str, xlabel: str = "seconds",
                ylabel: str = "top-1 (%)", title: str = "", points: Optional[dict[str, tuple[float, float]]] = None,
                hlines: Optional[dict[str, float]] = None, figsize: tuple[float, float] = (6.4, 4.0),
                legend_outside: bool = False) -> None:
    """Write a PNG line plot of labelled (x, y) series, single points and horizontal reference lines (headless)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=figsize, dpi=120)
    if len(curves) + len(points or {}) > 10:  # past the default 10 colours: 20, so no two series share one
        ax.set_prop_cycle(color=list(plt.get_cmap("tab20").colors))
    for label, y in (hlines or {}).items():
        ax.axhline(y, color="k", ls=":", lw=1, label=label)
    for label, pts in curves.items():
        if pts:
            xs, ys = zip(*pts)
            ax.plot(xs, ys, marker="o", markersize=3, lw=1.2, label=label)
    for label, (x, y) in (points or {}).items():
        ax.plot([x], [y], marker="o", ls="none", label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    if len(curves) + len(points or {}) + len(hlines or {}) > 1:
        if legend_outside:  # many series: beside the axes, so no curve is hidden under it
            ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
        else:
            ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def save_curve(curve: list[dict], out: str, title: str) -> str:
    """A validation curve beside an output file: OUT.curve.json and OUT.curve.png (top-1 against seconds or steps);
    returns the PNG's path (written by rank 0 under torchrun)."""
    import json
    from pathlib import Path

    from ..core import parallel
    from ..core.utils import atomic_write

    stem = str(Path(out).with_suffix(""))
    if parallel.is_main():
        atomic_write(stem + ".curve.json", lambda f: f.write(json.dumps({"title": title, "points": curve}, indent=1).encode()))
        pts = [(c.get("seconds", c["step"]), c["val_top1"]) for c in curve]
        plot_curves({"student": pts}, stem + ".curve.png", xlabel="seconds" if "seconds" in curve[0] else "step",
                    title=title)
    return stem + ".curve.png"
