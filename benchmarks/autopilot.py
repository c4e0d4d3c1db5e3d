"""The bit-width autopilot and the estimate's cost, as a user runs the CLI.

Run: python -m benchmarks.autopilot [--models resnet20 resnet56 efficientnet_lite0] [--max-drop 1.0] [--cost]
Writes benchmarks/results/autopilot.json: rows kind "autopilot" (model, max_drop, chosen configuration, size, estimated
drop, measured drop on real test data with its paired standard error, trials, seconds, the smallest data-free uniform
row of lowbit.json / imagenet_lite0.json within the budget) and kind "cost" (`datafree quantize MODEL` on its defaults:
total seconds and the estimate's seconds). Rows resume. Calibration: the bn-stats sets benchmarks.estimate cached (CIFAR:
256 x 100 iterations; EfficientNet-Lite0: 64 x 100, --low-res 0.75), so every trial sees the same samples.
"""
from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

from .common import CHECKPOINTS, RowStore, cached_set_dir, cli_json, command_line, data_root, git_commit, machine

RESULTS = Path("benchmarks/results")


def _model_args(name: str) -> list[str]:
    return [name] + (["--weights", str(Path(data_root()) / "models" / CHECKPOINTS[name])] if name in CHECKPOINTS else [])


def reference(name: str, max_drop: float) -> str:
    """The smallest data-free uniform row of the stored tables whose measured drop is within `max_drop`."""
    cands = []
    if name in CHECKPOINTS and (RESULTS / "lowbit.json").is_file():
        rows = json.loads((RESULTS / "lowbit.json").read_text())["rows"]
        fp = next(r["top1_exact"] for r in rows if r["model"] == name and r["stage"] == "fp32")
        cands = [(r["w_bits"], r["a_bits"], f"lowbit.json W{r['w_bits']}A{r['a_bits']} {r['source']} {r['stage']} "
                  f"(drop {fp - r['top1_exact']:.1f}, every layer)") for r in rows
                 if r["model"] == name and r["source"] in ("bn-stats", "mixmix") and r["stage"] != "mixed"
                 and fp - r["top1_exact"] <= max_drop]
    elif (RESULTS / "imagenet_lite0.json").is_file():
        rows = json.loads((RESULTS / "imagenet_lite0.json").read_text())["rows"]
        fp = next(r["top1"] for r in rows if r["stage"] == "fp32")
        cands = [(r["w_bits"], r["a_bits"], f"imagenet_lite0.json W{r['w_bits']}A{r['a_bits']} {r['source']} "
                  f"{r['stage']} (drop {fp - r['top1']:.2f})") for r in rows
                 if r["stage"] not in ("fp32", "mixed") and r["source"] not in ("real", "none")
                 and fp - r["top1"] <= max_drop]
    return min(cands)[2] if cands else "none within the budget (data-free rows)"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["resnet20", "resnet56", "efficientnet_lite0"])
    p.add_argument("--max-drop", type=float, default=1.0)
    p.add_argument("--cost", nargs="*", default=["resnet20", "efficientnet_lite0"],
                   help="models whose default `datafree quantize` run is timed with and without the estimate")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="benchmarks/results/autopilot.json")
    p.add_argument("--cache", default="benchmarks/cache")
    a = p.parse_args(argv)
    config = {k: v for k, v in vars(a).items() if k not in ("out", "cache")}
    store = RowStore(a.out, {"benchmark": "autopilot", "config": config, "seed": a.seed, "commit": git_commit(),
                             "machine": machine(), "command": command_line("benchmarks.autopilot", a, parser=p)},
                     selection=("models", "cost"))
    t_start = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        for name in a.models:
            large = name == "efficientnet_lite0"
            calib = cached_set_dir(name, "bn-stats", 64 if large else 256, 100, a.seed, a.cache,
                                   **({"batch_size": 32, "low_res": 0.75} if large else {}))
            if not calib.is_dir():
                raise SystemExit(f"{calib} is missing: run `python -m benchmarks.estimate` first (it caches the sets)")
            test = "imagenet:val1300" if large else "cifar10:test-exact"

            def row() -> dict:
                t0 = time.time()
                info = cli_json(["quantize", *_model_args(name), "--calib", str(calib), "--max-drop", str(a.max_drop),
                             "--eval", test, "--out", f"{tmp}/{name}.pt", "--seed", str(a.seed)])
                n, dis = info["n"], (100 - info["agreement"]) / 100
                return {"chosen": info["chosen"], "size_bytes": info["size_bytes"],
                        "estimated_drop": info["estimate"]["drop"], "interval": [info["estimate"]["lo"], info["estimate"]["hi"]],
                        "measured_drop": round(info["teacher_top1"] - info["top1"], 2),
                        "paired_se": round(100 * math.sqrt(dis / n), 2), "test": test, "trials": len(info["trials"]),
                        "trial_table": info["trials"], "seconds": round(time.time() - t0, 1), "reference": reference(name, a.max_drop)}

            r = store.run({"kind": "autopilot", "model": name, "max_drop": a.max_drop}, row)
            print(f"{name}: {r['chosen']} {r['size_bytes'] / 1024:.1f} KiB, estimated {r['estimated_drop']:.2f}, "
                  f"measured {r['measured_drop']:.2f} ± {r['paired_se']:.2f}; reference {r['reference']}", flush=True)
        for name in a.cost:
            def cost() -> dict:
                t0 = time.time()
                info = cli_json(["quantize", *_model_args(name), "--out", f"{tmp}/{name}_default.pt", "--seed", str(a.seed)])
                total = time.time() - t0
                return {"command": f"datafree quantize {name}", "seconds": round(total, 1),
                        "estimate_seconds": info["estimate"]["seconds"], "quantize_seconds": info["seconds"],
                        "estimated_drop": info["estimate"]["drop"]}

            r = store.run({"kind": "cost", "model": name}, cost)
            print(f"{name} default quantize: {r['seconds']:.0f} s, estimate {r['estimate_seconds']:.1f} s", flush=True)
    store.meta.update(complete=True, wall_seconds_this_run=round(time.time() - t_start, 1))
    store._write()


if __name__ == "__main__":
    main()
