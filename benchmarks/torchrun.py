"""torchrun on this machine: 2 processes x 1 thread against 1 process x 2 threads, side by side in one run, for
bn-stats synthesis of ResNet-20 and KD of ResNet-56 -> ResNet-20 at batch 128 (DistributedDataParallel, gloo).

Run: python -m benchmarks.torchrun [--synth-num 256] [--synth-iterations 40] [--kd-steps 60] [--repeats 2]
Writes benchmarks/results/torchrun.json: rows job, layout (1x2 | 2x1), seconds (median over repeats), runs, ratio
(layout's seconds / 1x2's, < 1 = faster). Each job is the CLI command a user runs; seconds are the command's own
timing of its work (synthesis wall time; the KD loop's seconds), so process start and model loading are not counted.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from .common import CHECKPOINTS, RowStore, command_line, data_root, git_commit, machine

LAYOUTS = {"1x2": (1, 2), "2x1": (2, 1)}


def cli(args: list[str], procs: int, threads: int) -> dict:
    """Run `datafree ARGS --json` as `procs` torchrun ranks of `threads` threads each; returns rank 0's JSON."""
    exe = str(Path(sys.executable).parent / "datafree")
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    if procs == 1:
        cmd = [exe, *args, "--threads", str(threads)]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}",
               "--no-python", exe, "--", *args, "--threads", str(threads)]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{r.stderr[-3000:]}")
    return json.loads([ln for ln in r.stdout.splitlines() if ln.startswith("{")][-1])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--synth-num", type=int, default=256)
    p.add_argument("--synth-iterations", type=int, default=40)
    p.add_argument("--kd-steps", type=int, default=60)
    p.add_argument("--repeats", type=int, default=2, help="runs per job and layout, interleaved; the median is kept")
    p.add_argument("--out", default="benchmarks/results/torchrun.json")
    a = p.parse_args(argv)
    models = Path(data_root()) / "models"
    meta = {"benchmark": "torchrun", "config": vars(a), "commit": git_commit(), "machine": machine(),
            "command": command_line("benchmarks.torchrun", a), "device": "cpu",
            "protocol": "the same CLI command as 1 process x 2 threads and as `torchrun --nproc_per_node 2` x 1 thread, "
                        "alternated; seconds = the command's own work timing (no start-up), median of repeats"}
    store = RowStore(a.out, meta)
    tmp = Path(tempfile.mkdtemp(prefix="dftorchrun"))
    try:
        set_dir = tmp / "kdset"  # the KD job's data: a small stored bn-stats set of the teacher
        cli(["synthesize", "resnet56", "--weights", str(models / CHECKPOINTS["resnet56"]), "--method", "bn-stats",
             "--num", "256", "--iterations", "5", "--out", str(set_dir), "--no-progress", "--json"], 1, 2)
        jobs = {
            "synthesize bn-stats resnet20": (
                lambda out: ["synthesize", "resnet20", "--weights", str(models / CHECKPOINTS["resnet20"]), "--method",
                             "bn-stats", "--num", str(a.synth_num), "--batch-size", "64", "--iterations",
                             str(a.synth_iterations), "--out", out, "--no-progress", "--json"],
                lambda j: j["wall_seconds"]),
            "distill resnet56->resnet20 b128": (
                lambda out: ["distill", "resnet56", "--weights", str(models / CHECKPOINTS["resnet56"]), "--student",
                             "resnet20", "--data", str(set_dir), "--steps", str(a.kd_steps), "--kd-batch-size", "128",
                             "--checkpoint-every", str(10 ** 6), "--out", out + ".pt", "--no-progress", "--json"],
                lambda j: j["seconds"]),
        }
        for job, (args, secs) in jobs.items():
            if all(store.get({"job": job, "layout": lay}) for lay in LAYOUTS):
                continue
            times: dict[str, list[float]] = {lay: [] for lay in LAYOUTS}
            for rep in range(a.repeats):
                for lay, (procs, threads) in LAYOUTS.items():
                    out = str(tmp / f"{lay}_{rep}")
                    times[lay].append(float(secs(cli(args(out), procs, threads))))
                    print(f"{job} {lay} run {rep}: {times[lay][-1]:.2f} s", flush=True)
            base = statistics.median(times["1x2"])
            for lay in LAYOUTS:
                med = statistics.median(times[lay])
                store.run({"job": job, "layout": lay},
                          lambda: {"seconds": round(med, 2), "runs": times[lay], "ratio": round(med / base, 3)})
        store.finish()
        print(json.dumps(store.rows, indent=1))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
