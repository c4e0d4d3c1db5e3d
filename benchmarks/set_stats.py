"""How well stored synthetic sets convinced their teacher: agreement with the target class, confidence, class balance.

Run: python -m benchmarks.set_stats [DIR ...]   (default: the ResNet-56 sets under benchmarks/cache)
Writes benchmarks/results/synthetic_sets.json. Reads the teacher logits stored with each set (no forward pass).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from datafree.data.synthetic import SyntheticSet, read_manifest
from datafree.evaluation.metrics import teacher_view
from datafree.synth import SYNTHESIZERS

from .common import git_commit, machine


def set_stats(path: str | Path) -> dict:
    """Statistics of one stored set from its manifest and stored logits."""
    man = read_manifest(path)
    d = SyntheticSet(path).data
    cond = SYNTHESIZERS.get(man["method"]).class_conditional
    cfg = man.get("config", {})
    return {"set": Path(path).name, "method": man["method"], "num": len(d), "iterations": cfg.get("iterations"),
            "bf16": cfg.get("bf16", False), "seconds": man.get("seconds"), **teacher_view(d, cond)}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dirs", nargs="*", help="synthetic-set directories")
    ap.add_argument("--out", default="benchmarks/results/synthetic_sets.json")
    a = ap.parse_args(argv)
    dirs = a.dirs or sorted(str(p.parent) for p in Path("benchmarks/cache").glob("resnet56_*/manifest.json"))
    rows = [set_stats(d) for d in dirs if read_manifest(d).get("complete")]
    meta = {"benchmark": "synthetic_sets", "command": " ".join(["python -m benchmarks.set_stats", *a.dirs]),
            "commit": git_commit(), "machine": machine(), "seed": None, "config": {"dirs": dirs}, "complete": True}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    for r in rows:
        print(r)


def render(path: str = "benchmarks/results/synthetic_sets.json") -> str:
    """Markdown table for BENCHMARKS.md."""
    rows = json.loads(Path(path).read_text())["rows"]
    out = ["| set | method | n | iterations | bf16 | synthesis s | teacher agrees with target | mean max prob | class balance |",
           "|---|---|---:|---:|---|---:|---:|---:|---:|"]
    for r in rows:
        agree = "–" if r["target_agreement"] is None else f"{r['target_agreement']:.1f} %"
        secs = f"{r['seconds']:.0f}" if r["seconds"] else "not recorded"
        out.append(f"| {r['set']} | {r['method']} | {r['num']} | {r['iterations'] or '–'} | {'yes' if r['bf16'] else 'no'} | "
                   f"{secs} | {agree} | {r['mean_max_prob']:.3f} | {r['class_balance']:.3f} |")
    return "\n".join(out)


if __name__ == "__main__":
    main()
