"""DeepInversion's α_f (BN-term weight) on ResNet-56: does CE still reach the targets within a CPU iteration budget?

Run: python -m benchmarks.di_weight [--weights 10 1 0.1] [--num 64] [--iterations 200] [--bf16]
Writes benchmarks/results/di_weight.json: per α_f, the CE and BN terms at the last iteration, how often
the teacher classifies the samples as their target, mean max probability and synthesis seconds. Sets are stored in
benchmarks/cache (a rerun reuses them).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from datafree.evaluation.metrics import teacher_view

from .common import RowStore, cached_set, command_line, git_commit, machine, pretrained


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", nargs="+", type=float, default=[10.0, 1.0, 0.1], help="α_f values")
    p.add_argument("--num", type=int, default=64)
    p.add_argument("--iterations", type=int, default=200)
    p.add_argument("--bf16", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="benchmarks/results/di_weight.json")
    p.add_argument("--cache", default="benchmarks/cache")
    a = p.parse_args(argv)
    meta = {"benchmark": "di_weight", "config": vars(a), "seed": a.seed, "commit": git_commit(), "machine": machine(),
            "command": command_line("benchmarks.di_weight", a), "teacher": "resnet56 (shared checkpoint)"}
    store = RowStore(a.out, meta, selection=("weights",))
    teacher = pretrained("resnet56")
    for w in a.weights:
        def run() -> dict:
            data, man = cached_set(teacher, "resnet56", "deepinversion", a.num, a.iterations, a.seed, a.cache,
                                   bf16=a.bf16, bn_weight=w)
            last = man["shard_stats"]["0"]  # loss terms at the last iteration of the (single) shard
            return {"final_ce": round(last["ce"], 4), "final_bn": round(last["bn"], 3), **teacher_view(data),
                    "seconds": man["seconds"]}

        r = store.run({"bn_weight": w}, run)
        print(f"α_f {w:g}: CE {r['final_ce']:.3f} BN {r['final_bn']:.1f} agreement {r['target_agreement']:.1f} %", flush=True)
    store.finish()


def render(path: str = "benchmarks/results/di_weight.json") -> str:
    """Markdown table for BENCHMARKS.md."""
    rows = json.loads(Path(path).read_text())["rows"]
    out = ["| α_f | final CE | final BN term | teacher agrees with target | mean max prob | synthesis s |",
           "|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        out.append(f"| {r['bn_weight']:g} | {r['final_ce']:.3f} | {r['final_bn']:.1f} | {r['target_agreement']:.1f} % | "
                   f"{r['mean_max_prob']:.3f} | {r['seconds']:.0f} |")
    return "\n".join(out)


if __name__ == "__main__":
    main()
