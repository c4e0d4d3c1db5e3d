"""RDSKD's MNIST setting: LeNet-5 (trained here on mnist:train) -> LeNet-5-half from scratch, data-free.

Run: python -m benchmarks.rdskd_mnist [--seeds 0 1 2] [--sweep] [--kd-steps 4000]
Writes benchmarks/results/rdskd_mnist.json: rows method, seed, setting, top1 (mnist:test, all 10k), seconds
(generator training + distillation). `dafl` and `rdskd` train a generator against the teacher alone, then the student
learns by KD on fresh generator batches; `real` distills on mnist:train images with the same KD settings and steps
(random crops of every batch, no flips). The generator objectives carry the library's BN-statistics term (bn_weight
1.0); `--bn-weight 0 --no-synthetic-augment` is the papers' objective on unaugmented batches
(benchmarks/results/rdskd_mnist_paper.json).
`setting` is `default` for the methods' default hyper-parameters; --sweep adds 4 settings per generator method
(generator lr and loss weights) at seed 0: RDSKD's claim is a higher mean and a smaller spread across settings.
Finished rows are kept; a rerun resumes.
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from datafree import evaluate, load_dataset
from datafree.core.seeds import derived_seed
from datafree.data.train import train_classifier_
from datafree.kd.loop import KDConfig
from datafree.kd.run import distill_student_
from datafree.kd.sources import GeneratorSource, RoundsConfig
from datafree.models import create_model, load_model
from datafree.models.record import record_of
from datafree.synth import make_config

from .common import RowStore, command_line, data_root, git_commit, machine

SWEEP = {  # setting name -> config overrides; the same four knobs for both methods
    "dafl": {"lr-low": {"lr": 0.005}, "lr-high": {"lr": 0.08}, "ie-low": {"entropy": 1.0}, "ie-high": {"entropy": 20.0}},
    "rdskd": {"lr-low": {"lr": 2.5e-4}, "lr-high": {"lr": 4e-3}, "ds-low": {"diversity": 0.001}, "ds-high": {"diversity": 0.1}},
}


def teacher_model(cache: str, seed: int, epochs: int, root: str):
    """LeNet-5 trained by the library on mnist:train (cached)."""
    path = Path(cache) / f"lenet5_mnist_e{epochs}_s{seed}.pt"
    if not path.exists():
        m = create_model("lenet5")
        train_classifier_(m, load_dataset("mnist:train", record_of(m).input_spec, root), epochs=epochs, seed=seed, progress=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(m.state_dict(), path)
    return load_model("lenet5", str(path))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", nargs="+", default=["dafl", "rdskd", "real"], choices=["dafl", "rdskd", "real"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--sweep", action="store_true", help="also the 4 hyper-parameter settings per generator method (seed 0)")
    p.add_argument("--kd-steps", type=int, default=4000, help="KD steps of every row (real data needs ~4000 to pass 98.5 %%)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=2e-3, help="student Adam learning rate (RDSKD's)")
    p.add_argument("--temperature", type=float, default=4.0)
    p.add_argument("--teacher-epochs", type=int, default=3)
    p.add_argument("--bn-weight", type=float, default=None,
                   help="generator BN-statistics term weight (default: the methods' own, 1.0; 0 = the papers' objective)")
    p.add_argument("--width", type=int, default=0, help="generator width (0: the library's default, 32)")
    p.add_argument("--no-synthetic-augment", action="store_true",
                   help="no random crops of generator batches during KD (real batches are always cropped)")
    p.add_argument("--curve-every", type=int, default=0,
                   help="also record mnist:test top-1 every N KD steps in each row's `curve` (0: off; reporting only)")
    p.add_argument("--out", default="benchmarks/results/rdskd_mnist.json")
    p.add_argument("--cache", default="benchmarks/cache")
    a = p.parse_args(argv)
    root = data_root()
    cmd = command_line("benchmarks.rdskd_mnist", a)
    meta = {"benchmark": "rdskd_mnist", "config": vars(a), "seed": a.seeds, "commit": git_commit(), "machine": machine(), "command": cmd,
            "pair": "lenet5 (trained on mnist:train) -> lenet5_half from scratch", "test": "mnist:test (10k)"}
    store = RowStore(a.out, meta, selection=("methods", "seeds", "sweep"))
    teacher = teacher_model(a.cache, 0, a.teacher_epochs, root)
    test = load_dataset("mnist:test", record_of(teacher).input_spec, root)
    store.run({"method": "teacher", "seed": 0, "setting": "reference"}, lambda: {"top1": evaluate(teacher, test)["top1"]})
    train = load_dataset("mnist:train", record_of(teacher).input_spec, root)

    def run(method: str, seed: int, setting: str, overrides: dict) -> dict:
        t0 = time.time()
        torch.manual_seed(seed)
        student = create_model("lenet5_half")
        kd = KDConfig(steps=a.kd_steps, batch_size=a.batch_size, lr=a.lr, temperature=a.temperature, freeze_bn=False,
                      flip=False, augment=method == "real" or not a.no_synthetic_augment, seed=seed,
                      val_every=a.curve_every or 10 ** 9)
        if method == "real":
            data = train
        else:
            bn = {} if a.bn_weight is None else {"bn_weight": a.bn_weight}
            cfg = make_config(method, seed=seed, width=a.width, **{**bn, **overrides})
            data = GeneratorSource(method, cfg, RoundsConfig(rounds=1, per_round=cfg.batch_size, steps_per_round=a.kd_steps),
                                   seed=derived_seed(seed, "stream"), progress=False)
        r = distill_student_(student, teacher, kd, data, progress=False, val=test if a.curve_every else None)
        out = {"top1": evaluate(student, test)["top1"], "seconds": round(time.time() - t0, 1),
               "synth_seconds": r["synth_seconds"], "kd_steps": r["steps"], "overrides": overrides, "command": cmd}
        if a.curve_every:
            out["curve"] = [{"step": c["step"], "top1": round(c["val_top1"], 2)} for c in r["curve"]]
        return out

    for method in a.methods:
        for seed in a.seeds:
            row = store.run({"method": method, "seed": seed, "setting": "default"}, lambda: run(method, seed, "default", {}))
            print(f"{method:6s} seed {seed} default: {row['top1']:.2f} ({row['seconds']:.0f} s)", flush=True)
    if a.sweep:
        for method in [m for m in a.methods if m in SWEEP]:
            for setting, ov in SWEEP[method].items():
                row = store.run({"method": method, "seed": 0, "setting": setting}, lambda: run(method, 0, setting, ov))
                print(f"{method:6s} seed 0 {setting}: {row['top1']:.2f} ({row['seconds']:.0f} s)", flush=True)
    store.finish(complete=set(a.methods) == {"dafl", "rdskd", "real"} and len(a.seeds) >= 3 and a.sweep)


def summary(rows: list[dict]) -> dict[str, dict]:
    """Per method: mean/std over seeds at the default setting, and the spread (max − min, std) over its settings."""
    out: dict[str, dict] = {}
    for m in sorted({r["method"] for r in rows if r["method"] != "teacher"}):
        d = [r["top1"] for r in rows if r["method"] == m and r["setting"] == "default"]
        s = [r["top1"] for r in rows if r["method"] == m and (r["setting"] != "default" or r["seed"] == 0)]
        out[m] = {"mean": statistics.mean(d), "std": statistics.stdev(d) if len(d) > 1 else 0.0, "n": len(d),
                  "settings": len(s), "sweep_min": min(s), "sweep_max": max(s),
                  "sweep_std": statistics.stdev(s) if len(s) > 1 else 0.0}
    return out


def render(path: str = "benchmarks/results/rdskd_mnist.json") -> str:
    """Markdown tables for BENCHMARKS.md."""
    import json

    d = json.loads(Path(path).read_text())
    rows = d["rows"]
    t = next((r for r in rows if r["method"] == "teacher"), None)
    out = [f"Teacher LeNet-5 (trained here, {d['meta']['config']['teacher_epochs']} epochs): "
           f"{t['top1']:.2f} % on mnist:test.\n" if t else "",
           "| method | seeds (default) | top-1 mean ± std | settings | worst / best over settings | std over settings |",
           "|---|---:|---:|---:|---:|---:|"]
    for m, s in summary(rows).items():
        out.append(f"| {m} | {s['n']} | {s['mean']:.2f} ± {s['std']:.2f} | {s['settings']} | "
                   f"{s['sweep_min']:.2f} / {s['sweep_max']:.2f} | {s['sweep_std']:.2f} |")
    out += ["", "| method | seed | setting | top-1 | seconds |", "|---|---:|---|---:|---:|"]
    out += [f"| {r['method']} | {r['seed']} | {r['setting']} | {r['top1']:.2f} | {r.get('seconds', 0):.0f} |"
            for r in rows if r["method"] != "teacher"]
    return "\n".join(out) + f"\n\nCommand: `{d['meta']['command']}`"


if __name__ == "__main__":
    main()
