"""Structured pruning of ResNet-56 (~50 % of FLOPs) recovered by KD on DeepInversion samples vs real data vs nothing.

Run: python -m benchmarks.prune [--sparsity 0.5] [--steps 1500] [--bf16]
Writes benchmarks/results/prune_resnet56.json: rows with method (none | deepinversion | cifar10:train-exact | ...),
top1_exact, top1_jpeg, seconds, flops/params before and after. Synthetic samples are stored chunks shared with the KD
benchmark (benchmarks/cache): `synth_seconds` is their recorded synthesis time; `seconds` is the row's wall time in this
run (fine-tuning and evaluation, plus synthesis of any chunk not stored yet). Rows at another `--steps`, `--num` or `--bn-weight`
are kept beside the new ones.
"""
from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

from datafree import evaluate, load_dataset
from datafree.compressors.prune import count_flops_params, prune_structured_
from datafree.kd.loop import KDConfig
from datafree.kd.run import distill_student_
from datafree.models.record import record_of

from .common import (
    RowStore,
    chunked_set,
    command_line,
    data_root,
    di_bn_weight,
    git_commit,
    machine,
    pretrained,
    row_label,
)

METHODS = ("none", "deepinversion", "bn-stats", "cifar10:train-exact")

TEACHER = "resnet56"  # the shared checkpoint; also the cache key of its synthetic chunks


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--sparsity", type=float, default=0.5, help="fraction of inner-block channels removed")
    p.add_argument("--num", type=int, default=512, help="samples per source (synthetic sets shared with the KD benchmark)")
    p.add_argument("--chunk", type=int, default=256, help="synthetic sets are stored (and reused) in chunks of this size")
    p.add_argument("--iterations", type=int, default=400, help="pixel-optimization iterations of the synthetic sets")
    p.add_argument("--bf16", action="store_true", help="synthesize under bfloat16 autocast")
    p.add_argument("--bn-weight", type=float, help="DeepInversion α_f (default: the library's)")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--temperature", type=float, default=4.0)
    p.add_argument("--freeze-bn", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="benchmarks/results/prune_resnet56.json")
    p.add_argument("--cache", default="benchmarks/cache")
    a = p.parse_args(argv)
    root = data_root()
    cmd = command_line("benchmarks.prune", a)
    meta = {"benchmark": "prune_resnet56", "config": vars(a), "seed": a.seed, "commit": git_commit(), "machine": machine(),
            "command": cmd}
    store = RowStore(a.out, meta, selection=("methods", "bn_weight", "steps", "num"))  # rows at other α_f/steps/num stay
    teacher = pretrained(TEACHER)
    tests = {s: load_dataset(f"cifar10:test-{s}", record_of(teacher).input_spec, root) for s in ("exact", "jpeg")}
    before = count_flops_params(teacher)
    store.run({"method": "unpruned"}, lambda: dict({f"top1_{s}": evaluate(teacher, d)["top1"] for s, d in tests.items()},
                                                  flops=before["flops"], params=before["params"]))
    bn_weight = di_bn_weight(a.bn_weight)
    for method in a.methods:
        def run() -> dict:
            t0 = time.time()
            student = copy.deepcopy(teacher)
            prune_structured_(student, a.sparsity)
            after = count_flops_params(student)
            synth_s, steps = 0.0, 0
            if method != "none":
                if method.startswith("cifar10:"):
                    data = load_dataset(method, record_of(teacher).input_spec, root).subset(a.num, a.seed)
                else:
                    kw = {"bf16": a.bf16, "bn_weight": a.bn_weight if method == "deepinversion" else None}
                    data, synth_s = chunked_set(teacher, TEACHER, method, a.num, a.chunk, a.iterations, a.seed, a.cache, **kw)
                kd = KDConfig(steps=a.steps, batch_size=a.batch_size, lr=a.lr, temperature=a.temperature,
                              freeze_bn=a.freeze_bn, seed=a.seed)
                ck = str(Path(a.cache) / "prune_ckpt" / f"{method.replace(':', '_')}_s{a.sparsity}_n{a.num}_st{a.steps}"
                                                           f"_it{a.iterations}{'_bf16' if a.bf16 else ''}"
                                                           f"{f'_af{bn_weight}' if method == 'deepinversion' else ''}")
                distill_student_(student, teacher, kd, data, checkpoint_dir=ck, checkpoint_every=200)
                steps = a.steps
            acc = {f"top1_{s}": evaluate(student, d)["top1"] for s, d in tests.items()}
            return dict(acc, command=cmd, seconds=round(time.time() - t0, 1), synth_seconds=round(synth_s, 1), steps=steps,
                        samples=0 if method == "none" else a.num, sparsity=a.sparsity,
                        flops_before=before["flops"], flops_after=after["flops"],
                        flops_removed_pct=round(100 * (1 - after["flops"] / before["flops"]), 2),
                        params_before=before["params"], params_after=after["params"])

        key = {"method": method} if method == "none" else {"method": method, "steps": a.steps, "samples": a.num}
        if method == "deepinversion":  # rows at different α_f live side by side
            key["bn_weight"] = bn_weight
        r = store.run(key, run)
        print(f"{method:22s} exact {r['top1_exact']:.2f} jpeg {r['top1_jpeg']:.2f} "
              f"(FLOPs -{r['flops_removed_pct']:.1f}%, {r['seconds']:.0f} s)", flush=True)
    store.finish(complete=set(METHODS) <= {r["method"] for r in store.rows})


def render(path: str = "benchmarks/results/prune_resnet56.json") -> str:
    """Markdown table for BENCHMARKS.md."""
    import json

    rows = json.loads(Path(path).read_text())["rows"]
    u = next(r for r in rows if r["method"] == "unpruned")
    out = [f"Unpruned ResNet-56: {u['top1_exact']:.2f} exact / {u['top1_jpeg']:.2f} jpeg, {u['flops'] / 1e6:.1f} M MACs, "
           f"{u['params'] / 1e3:.0f} k params.", "",
           "| fine-tuning data | top-1 exact | drop | top-1 jpeg | MACs after | FLOPs removed | params after | samples | KD steps | seconds | synthesis s |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if r["method"] == "unpruned":
            continue
        name = row_label(r)
        out.append(f"| {name} | {r['top1_exact']:.2f} | {u['top1_exact'] - r['top1_exact']:.2f} | {r['top1_jpeg']:.2f} | "
                   f"{r['flops_after'] / 1e6:.1f} M | {r['flops_removed_pct']:.1f} % | {r['params_after'] / 1e3:.0f} k | "
                   f"{r.get('samples', 0)} | {r['steps']} | {r['seconds']:.0f} | {r.get('synth_seconds', 0):.0f} |")
    by_cmd: dict[str, list[str]] = {}
    for r in rows:
        if r.get("command") and r["method"] != "unpruned":
            by_cmd.setdefault(r["command"], []).append(row_label(r))
    if len(by_cmd) > 1:
        out += [line for c, names in by_cmd.items() for line in ("", f"Rows {', '.join(names)}: `{c}`")]
    return "\n".join(out)


if __name__ == "__main__":
    main()
