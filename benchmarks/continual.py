"""Data-free continual learning on MNIST 5+5: a LeNet-5 trained on digits 0-4 learns 5-9 without old-class data.

Run: python -m benchmarks.continual [--steps 1000]
Writes benchmarks/results/continual.json: rows with method (finetune-new | lwf | deepinversion), top1_old, top1_new,
top1_all (on the 10k MNIST test images; old = labels 0-4), seconds. The old model is trained here on real
mnist:train images of classes 0-4 only (row method "old-model"); every method then sees real images of classes 5-9
only; deepinversion adds inverted samples of the old model (their synthesis time is in `synth_seconds` and `seconds`).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from datafree import load_dataset
from datafree.compressors.continual import ContinualConfig, extend_classes, split_accuracy
from datafree.data.train import train_classifier_
from datafree.kd.loop import KDConfig
from datafree.models import create_model, load_model
from datafree.models.record import record_of
from datafree.synth import make_config, synthesize

from .common import RowStore, command_line, data_root, git_commit, machine, row_label

METHODS = ("finetune-new", "lwf", "deepinversion")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--model", default="lenet5")
    p.add_argument("--old-epochs", type=int, default=3)
    p.add_argument("--num-new", type=int, default=10000, help="real images of the new classes")
    p.add_argument("--num-inverted", type=int, default=1024)
    p.add_argument("--iterations", type=int, default=200)
    p.add_argument("--bn-weight", type=float, default=1.0, help="DeepInversion α_f for the inverted samples")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="benchmarks/results/continual.json")
    p.add_argument("--cache", default="benchmarks/cache")
    a = p.parse_args(argv)
    root = data_root()
    cmd = command_line("benchmarks.continual", a)
    meta = {"benchmark": "continual", "config": vars(a), "seed": a.seed, "commit": git_commit(), "machine": machine(),
            "command": cmd, "setting": "MNIST split 5+5 (class-incremental, one 10-way head)"}
    store = RowStore(a.out, meta, selection=("methods", "bn_weight"))
    spec = record_of(create_model(a.model, num_classes=5)).input_spec
    train = load_dataset("mnist:train", spec, root)
    test = load_dataset("mnist:test", spec, root)
    old_path = Path(a.cache) / f"continual_{a.model}_old5_e{a.old_epochs}_s{a.seed}.pt"
    if not old_path.exists():
        t0 = time.time()
        m = create_model(a.model, num_classes=5)
        train_classifier_(m, train.only_classes(range(5)), epochs=a.old_epochs, seed=a.seed, progress=True)
        old_path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(m.state_dict(), old_path)
        print(f"old model trained in {time.time() - t0:.0f} s", flush=True)
    old = load_model(a.model, str(old_path), num_classes=5)
    store.run({"method": "old-model"}, lambda: split_accuracy(old, test.only_classes(range(5)), 5))
    new = train.only_classes(range(5, 10)).subset(a.num_new, a.seed)
    kd = KDConfig(steps=a.steps, batch_size=a.batch_size, lr=a.lr, freeze_bn=False, flip=False, seed=a.seed)
    for method in a.methods:
        def run() -> dict:
            t0 = time.time()
            inv, synth_s = None, 0.0
            if method == "deepinversion":
                inv = synthesize(old, "deepinversion", make_config("deepinversion", num=a.num_inverted,
                                                                   iterations=a.iterations, seed=a.seed,
                                                                   bn_weight=a.bn_weight))
                synth_s = time.time() - t0
            m = extend_classes(old, new, 10, ContinualConfig(method=method), kd=kd, synthetic=inv)
            return dict(split_accuracy(m, test, 5), command=cmd, seconds=round(time.time() - t0, 1), synth_seconds=round(synth_s, 1),
                        steps=a.steps, new_samples=len(new), inverted_samples=0 if inv is None else len(inv))

        r = store.run({"method": method, **({"bn_weight": a.bn_weight} if method == "deepinversion" else {})}, run)
        print(f"{method:14s} old {r['top1_old']:.2f} new {r['top1_new']:.2f} all {r['top1_all']:.2f} ({r['seconds']:.0f} s)",
              flush=True)
    store.finish(complete=set(METHODS) <= {r["method"] for r in store.rows})


def render(path: str = "benchmarks/results/continual.json") -> str:
    """Markdown table for BENCHMARKS.md."""
    import json

    rows = json.loads(Path(path).read_text())["rows"]
    o = next((r for r in rows if r["method"] == "old-model"), None)
    out = [f"Old model (classes 0-4 only, 5-way): {o['top1_old']:.2f} on the old-class test images.\n" if o else "",
           "| method | top-1 old (0-4) | top-1 new (5-9) | top-1 all | seconds |", "|---|---:|---:|---:|---:|"]
    for r in rows:
        if r["method"] != "old-model":
            name = row_label(r)
            out.append(f"| {name} | {r['top1_old']:.2f} | {r['top1_new']:.2f} | {r['top1_all']:.2f} | {r['seconds']:.0f} |")
    return "\n".join(out)


if __name__ == "__main__":
    main()
