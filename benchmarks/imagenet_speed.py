"""Synthesis throughput at 224 px on this CPU: EfficientNet-Lite0, bn-stats, side by side in one run.

Run: python -m benchmarks.imagenet_speed [--iterations 12] [--batch 32]
Writes benchmarks/results/imagenet_synth_speed.json: per configuration, image-iterations per second (batch x
iterations / wall seconds of `synthesize`) and the ratio to the first row — the issue's starting point (full
resolution, no allocator tuning). Each configuration runs in its own fresh process (the allocator setting is
process-wide), one after another on the idle machine.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from .common import RowStore, command_line, git_commit, machine

# name: (environment, synthesis overrides)
CONFIGS = {
    "baseline (full res)": ({"DATAFREE_MALLOC_TUNE": "0"}, {}),
    "allocator": ({}, {}),
    "allocator + channels-last": ({}, {"channels_last": True}),
    "allocator + low-res 0.75": ({}, {"low_res": 0.75}),
    "allocator + low-res 0.9": ({}, {"low_res": 0.9}),
    "allocator + low-res 0.75 at quarter size": ({}, {"low_res": 0.75, "low_res_scale": 0.25}),
    "allocator + low-res 0.9 at quarter size": ({}, {"low_res": 0.9, "low_res_scale": 0.25}),
}


def _worker(over: dict, iterations: int, batch: int) -> dict:
    import torch

    import datafree as df

    tuned = df.tune_allocator()
    torch.manual_seed(0)
    model = df.load_model("efficientnet_lite0")
    cfg = df.make_config("bn-stats", num=batch, batch_size=batch, iterations=iterations, seed=0, **over)
    t0 = time.time()
    df.synthesize(model, "bn-stats", cfg)
    s = time.time() - t0
    return {"allocator_tuned": tuned, "seconds": round(s, 1), "img_it_per_s": round(batch * iterations / s, 2)}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--iterations", type=int, default=12)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--out", default="benchmarks/results/imagenet_synth_speed.json")
    a = p.parse_args(argv)
    if a.worker:
        print(json.dumps(_worker(json.loads(a.worker), a.iterations, a.batch)))
        return
    meta = {"benchmark": "imagenet_synth_speed", "config": {"iterations": a.iterations, "batch": a.batch},
            "commit": git_commit(), "machine": machine(), "command": command_line("benchmarks.imagenet_speed", a),
            "note": "issue 33's starting point: ~10 image-iterations/s (3.3 s per iteration of 32 images at 224 px)"}
    store = RowStore(a.out, meta)
    base = None
    for name, (env, over) in CONFIGS.items():
        def row() -> dict:
            cmd = [sys.executable, "-m", "benchmarks.imagenet_speed", "--iterations", str(a.iterations),
                   "--batch", str(a.batch), "--worker", json.dumps(over)]
            out = subprocess.run(cmd, env={**os.environ, **env}, capture_output=True, text=True, check=True).stdout
            return {"overrides": over, "env": env, **json.loads(out.strip().splitlines()[-1])}

        r = store.run({"config": name}, row)
        base = base or r["img_it_per_s"]
        r["ratio"] = round(r["img_it_per_s"] / base, 2)
        print(f"{name:28s} {r['img_it_per_s']:7.2f} image-iterations/s  {r['ratio']:.2f}x", flush=True)
    store.finish(complete=True)


if __name__ == "__main__":
    main()
