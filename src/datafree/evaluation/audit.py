"""Privacy audit of synthetic samples: how close does each one come to a real training image (in pixels and in the
teacher's features), against how close real images come to each other, and can membership be read off the teacher?"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..core.errors import DatafreeError
from ..core.utils import frozen_eval, model_device
from ..data.base import TensorData
from ..models.loading import head_of, input_spec_of


@torch.no_grad()
def features(model: nn.Module, data: TensorData, batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """(input of the classifier head, logits) of every sample."""
    head = model.get_submodule(head_of(model))
    store: list[torch.Tensor] = []
    h = head.register_forward_pre_hook(lambda m, inp: store.append(inp[0].detach().flatten(1).cpu()))
    dev = model_device(model)
    logits = []
    try:
        with frozen_eval(model):
            for xb in data.batches(batch_size):
                logits.append(model(xb.to(dev)).float().cpu())
    finally:
        h.remove()
    return torch.cat(store), torch.cat(logits)


def nearest(a: torch.Tensor, b: torch.Tensor, exclude_self: bool = False, chunk: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """For each row of a: (L2 distance to its nearest row of b, that row's index); `exclude_self` when a is b."""
    d_out, i_out = [], []
    b2 = (b * b).sum(1)
    for s in range(0, len(a), chunk):
        x = a[s:s + chunk]
        d = ((x * x).sum(1, keepdim=True) - 2 * x @ b.T + b2[None]).clamp_min(0)
        if exclude_self:
            idx = torch.arange(s, s + len(x))
            d[torch.arange(len(x)), idx] = float("inf")
        v, i = d.min(1)
        d_out.append(v.sqrt())
        i_out.append(i)
    return torch.cat(d_out), torch.cat(i_out)


def auroc(pos: torch.Tensor, neg: torch.Tensor) -> float:
    """P(score of a positive > score of a negative) (ties count half): the area under the ROC curve."""
    pos, neg = pos.double().flatten(), neg.double().flatten()
    allv = torch.cat([pos, neg])
    ranks = torch.empty_like(allv)
    order = torch.argsort(allv)
    ranks[order] = torch.arange(1, len(allv) + 1, dtype=torch.float64)
    # average ranks over ties
    vals, inv, counts = torch.unique(allv, return_inverse=True, return_counts=True)
    sums = torch.zeros(len(vals), dtype=torch.float64).index_add_(0, inv, ranks)
    ranks = (sums / counts)[inv]
    r_pos = ranks[: len(pos)].sum()
    return float((r_pos - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def leak_null(nn_index: torch.Tensor, m: int, permutations: int = 2000, seed: int = 0) -> torch.Tensor:
    """Shares of samples whose nearest pooled image falls in the first half, for random equal splits of the 2m pooled
    images: the leak test's null distribution (wide when a few images are everybody's nearest neighbour)."""
    g = torch.Generator().manual_seed(seed)
    keys = torch.rand(permutations, 2 * m, generator=g)
    first_half = keys.argsort(1).argsort(1) < m  # a uniformly random m-subset per row
    return first_half[:, nn_index].float().mean(1)


def audit(model: nn.Module, synthetic: TensorData, train: TensorData, held_out: TensorData,
          pairs_png: Optional[str] = None, num_pairs: int = 16) -> dict:
    """The audit of `synthetic` against `train` (the teacher's training data or a proxy of it) with `held_out` real
    images the teacher never saw: nearest-neighbour distances in pixel and feature space against the real-vs-real
    baseline, the closest pairs, and membership scores."""
    if len(synthetic) == 0 or len(train) < 2 or len(held_out) == 0:
        raise DatafreeError("the audit needs synthetic samples, >= 2 training images and held-out images")
    spec = input_spec_of(model)
    if tuple(synthetic.x.shape[1:]) != tuple(train.x.shape[1:]):
        raise DatafreeError(f"synthetic samples {tuple(synthetic.x.shape[1:])} and real images "
                            f"{tuple(train.x.shape[1:])} differ in shape")

    def pixels(d: TensorData) -> torch.Tensor:
        return spec.denormalize(d.x.float()).clamp(0, 1).flatten(1)

    dim = float(synthetic.x[0].numel()) ** 0.5  # distances per pixel value: RMS difference in [0, 1]
    p_syn, p_tr, p_ho = pixels(synthetic), pixels(train), pixels(held_out)
    f_syn, l_syn = features(model, synthetic)
    f_tr, l_tr = features(model, train)
    f_ho, l_ho = features(model, held_out)
    out: dict = {"n_synthetic": len(synthetic), "n_train": len(train), "n_held_out": len(held_out)}
    for space, (s, t, h) in {"pixel": (p_syn, p_tr, p_ho), "feature": (f_syn, f_tr, f_ho)}.items():
        scale = dim if space == "pixel" else 1.0
        d_syn, i_syn = nearest(s, t)
        d_ho, _ = nearest(h, t)  # real images the teacher never saw, to their nearest training image
        m = min(len(t), len(h))  # equal-size sets for the leak test (a larger set has nearer neighbours)
        sub = torch.randperm(len(t), generator=torch.Generator().manual_seed(0))[:m]
        # a sample is nearer the training set iff its nearest image in the pooled 2m lies among the first m
        _, i_pool = nearest(s, torch.cat([t[sub], h[:m]]))
        share = float((i_pool < m).float().mean())
        null = leak_null(i_pool, m)
        q = lambda v: [round(float(x), 5) for x in torch.quantile(v / scale, torch.tensor([0.0, 0.05, 0.5]))]  # noqa: E731
        out[space] = {
            "synthetic_to_train": {"min": q(d_syn)[0], "p5": q(d_syn)[1], "median": q(d_syn)[2]},
            "held_out_to_train": {"min": q(d_ho)[0], "p5": q(d_ho)[1], "median": q(d_ho)[2]},
            # below 1: synthetic samples sit closer to training images than unseen real images do
            "median_ratio": round(float(d_syn.median() / d_ho.median()), 4),
            "closer_than_any_held_out": round(float((d_syn < d_ho.min()).float().mean()), 4),
            # leakage: a synthetic sample nearer the training set than the (same-size) held-out set
            "nearer_train_than_held_out": round(share, 4),
            # the same share under random re-splits of those 2m real images (training and held-out exchangeable):
            # its 95th percentile, and the one-sided p-value of the observed share
            "nearer_train_null_p95": round(float(torch.quantile(null, 0.95)), 4),
            "nearer_train_p_value": round(float((1 + (null >= share - 1e-12).sum()) / (1 + len(null))), 4),
        }
        if space == "pixel":
            closest = torch.argsort(d_syn)[:num_pairs]
            out["closest_pairs"] = [{"synthetic": int(i), "train": int(i_syn[i]), "distance": round(float(d_syn[i] / scale), 5)}
                                    for i in closest]
            if pairs_png:
                from ..data.grid import save_grid

                pair_x = torch.stack([v for i in closest for v in (synthetic.x[i], train.x[i_syn[i]])])
                save_grid(pair_x, spec, pairs_png, max_images=2 * num_pairs)
    # membership inference on the teacher: are training images told apart from held-out ones by its confidence?
    conf_tr = F.softmax(l_tr, 1).max(1).values
    conf_ho = F.softmax(l_ho, 1).max(1).values
    out["membership_auroc"] = round(auroc(conf_tr, conf_ho), 4)
    if train.y is not None and held_out.y is not None:
        loss_tr = F.cross_entropy(l_tr, train.y, reduction="none")
        loss_ho = F.cross_entropy(l_ho, held_out.y, reduction="none")
        out["membership_auroc_loss"] = round(auroc(-loss_tr, -loss_ho), 4)
    conf_syn = F.softmax(l_syn, 1).max(1).values
    out["synthetic_confidence_median"] = round(float(conf_syn.median()), 4)
    out["train_confidence_median"] = round(float(conf_tr.median()), 4)
    out["held_out_confidence_median"] = round(float(conf_ho.median()), 4)
    return out


def summary_line(r: dict) -> str:
    """One human line of an audit result."""
    p, f = r["pixel"], r["feature"]
    return (f"pixel NN distance median {p['synthetic_to_train']['median']:.4f} vs real-vs-real "
            f"{p['held_out_to_train']['median']:.4f} (ratio {p['median_ratio']:.2f}), closest {p['synthetic_to_train']['min']:.4f}; "
            f"feature ratio {f['median_ratio']:.2f}; nearer train than held-out: pixel {p['nearer_train_than_held_out']:.0%} "
            f"(p {p['nearer_train_p_value']:.3f}), feature {f['nearer_train_than_held_out']:.0%} (p {f['nearer_train_p_value']:.3f}; "
            f"p against random splits of the same real images, small = leak); teacher membership AUROC "
            f"{r['membership_auroc']:.3f}")


__all__ = ["audit", "auroc", "nearest", "features", "leak_null", "summary_line"]
