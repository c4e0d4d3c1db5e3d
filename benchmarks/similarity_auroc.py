"""The similarity score as a detector: AUROC of per-batch scores at telling CIFAR-10 test batches (in-distribution)
from shifted ones (MNIST, Gaussian and uniform noise, JPEG at quality 10, inverted colours).

Run: python -m benchmarks.similarity_auroc [--model resnet20] [--batch-sizes 64 32] [--scores bn bn+oh]
Writes benchmarks/results/similarity_auroc.json: rows score, ood, batch_size, auroc, n_id_batches, n_ood_batches,
id_median, ood_median. In-distribution: cifar10:test-jpeg (10k) batches; the image shifts (JPEG q10, inverted) are
made from the first 1000 of those same images, so the only difference from the in-distribution batches is the shift;
MNIST and noise sets have 1000 samples too, in the model's normalization.
"""
from __future__ import annotations

import argparse
import io
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F

from datafree import load_dataset
from datafree.data.base import TensorData
from datafree.evaluation.audit import auroc
from datafree.evaluation.metrics import SCORES, similarity_per_batch
from datafree.models.record import record_of
from datafree.models.spec import MNIST_SPEC

from .common import RowStore, command_line, data_root, git_commit, machine, pretrained


def _jpeg(x01: torch.Tensor, quality: int) -> torch.Tensor:
    from PIL import Image

    out = []
    for img in (x01.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy():
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="JPEG", quality=quality)
        out.append(np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB")))
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).float() / 255


def ood_sets(spec, root: str, n: int, seed: int) -> dict[str, TensorData]:
    """Shifted data in the model's normalization, n samples each."""
    g = torch.Generator().manual_seed(seed)
    base = load_dataset("cifar10:test-jpeg", spec, root)  # the in-distribution images themselves
    x01 = spec.denormalize(base.x[:n]).clamp(0, 1)
    mn = load_dataset("mnist:test", MNIST_SPEC, root).subset(n, seed)
    m01 = F.interpolate(MNIST_SPEC.denormalize(mn.x).clamp(0, 1), size=tuple(spec.shape[1:]), mode="bilinear",
                        align_corners=False).repeat(1, spec.shape[0], 1, 1)
    shape = (n, *spec.shape)
    return {"mnist": TensorData(spec.normalize(m01), name="mnist"),
            "gaussian": TensorData(torch.randn(shape, generator=g), name="gaussian"),
            "uniform": TensorData(spec.normalize(torch.rand(shape, generator=g)), name="uniform"),
            "jpeg-q10": TensorData(spec.normalize(_jpeg(x01, 10)), name="jpeg-q10"),
            "inverted": TensorData(spec.normalize(1 - x01), name="inverted")}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="resnet20")
    p.add_argument("--batch-sizes", nargs="+", type=int, default=[64, 32])
    p.add_argument("--scores", nargs="+", default=["bn", "bn+oh"], choices=list(SCORES))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="benchmarks/results/similarity_auroc.json")
    a = p.parse_args(argv)
    root = data_root()
    t0 = time.time()
    model = pretrained(a.model)
    spec = record_of(model).input_spec
    ind = load_dataset("cifar10:test-jpeg", spec, root)
    oods = ood_sets(spec, root, 1000, a.seed)
    meta = {"benchmark": "similarity_auroc", "config": vars(a), "seed": a.seed, "commit": git_commit(), "machine": machine(),
            "command": command_line("benchmarks.similarity_auroc", a), "in_distribution": "cifar10:test-jpeg"}
    store = RowStore(a.out, meta, selection=("batch_sizes", "scores"))
    for sc, b in ((sc, b) for sc in a.scores for b in a.batch_sizes):
        id_scores = similarity_per_batch(model, ind, b, seed=a.seed, score=sc)
        for name, d in oods.items():
            def row(d=d, b=b, sc=sc, id_scores=id_scores) -> dict:
                s = similarity_per_batch(model, d, b, seed=a.seed, score=sc)
                return {"auroc": round(auroc(torch.tensor(s), torch.tensor(id_scores)), 4), "n_id_batches": len(id_scores),
                        "n_ood_batches": len(s), "id_median": round(statistics.median(id_scores), 4),
                        "ood_median": round(statistics.median(s), 4)}
            r = store.run({"score": sc, "ood": name, "batch_size": b}, row)
            print(f"{sc} batch {b} {name}: AUROC {r['auroc']:.4f}", flush=True)
    store.finish(wall_seconds_this_run=round(time.time() - t0, 1))


if __name__ == "__main__":
    main()
