"""KD step time, ResNet-56 teacher -> ResNet-20 student at batch 128, variants side by side in one run.

Run: python -m benchmarks.perf_kd [--steps 12] [--repeats 3]
Writes benchmarks/results/perf_kd.json: per variant the fastest of `repeats` timings of `steps` KD steps (seconds per
step) and the ratio to the float32 baseline; plus a torch.profiler breakdown of the fastest variant's step.
"""
from __future__ import annotations

import argparse
import time

import torch

from datafree.data.base import TensorData
from datafree.kd.loop import Distiller, KDConfig
from datafree.models import create_model

from .common import RowStore, command_line, git_commit, machine, pretrained

VARIANTS = {"fp32": {}, "bf16_teacher": {"bf16": True}, "channels_last": {"channels_last": True},
            "bf16_teacher+channels_last": {"bf16": True, "channels_last": True}}


def step_seconds(teacher, data: TensorData, kd: KDConfig, steps: int, repeats: int) -> float:
    """Fastest of `repeats` timings of `steps` KD steps (after 2 warm-up steps)."""
    torch.manual_seed(0)
    d = Distiller(create_model("resnet20"), teacher, kd.replace(steps=2 + steps * repeats), source=data)
    d.run(steps=2, progress=False)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        d.run(steps=steps, progress=False)
        best = min(best, (time.perf_counter() - t0) / steps)
    return best


def profile(teacher, data: TensorData, kd: KDConfig, steps: int = 4) -> list[dict]:
    """Top operators of a few KD steps by self CPU time."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as prof

    d = Distiller(create_model("resnet20"), teacher, kd.replace(steps=steps + 2), source=data)
    d.run(steps=2, progress=False)
    with prof(activities=[ProfilerActivity.CPU]) as p:
        d.run(steps=steps, progress=False)
    rows = sorted(p.key_averages(), key=lambda e: -e.self_cpu_time_total)[:12]
    total = sum(e.self_cpu_time_total for e in p.key_averages())
    return [{"op": e.key, "self_ms_per_step": round(e.self_cpu_time_total / 1000 / steps, 2),
             "share": round(e.self_cpu_time_total / total, 3)} for e in rows]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--out", default="benchmarks/results/perf_kd.json")
    a = p.parse_args(argv)
    cmd = command_line("benchmarks.perf_kd", a)
    t_start = time.time()
    meta = {"benchmark": "perf_kd", "config": vars(a), "seed": 0, "commit": git_commit(), "machine": machine(),
            "command": cmd, "pair": "resnet56 -> resnet20"}
    store = RowStore(a.out, meta)
    store.rows = []  # a timing is only meaningful within one run
    teacher = pretrained("resnet56")
    gen = torch.Generator().manual_seed(0)
    data = TensorData(torch.randn(1024, 3, 32, 32, generator=gen), name="noise")
    base = KDConfig(batch_size=a.batch_size, lr=1e-3, freeze_bn=False, val_every=10 ** 9)
    times = {}
    for name, kw in VARIANTS.items():
        times[name] = step_seconds(teacher, data, base.replace(**kw), a.steps, a.repeats)
        print(f"{name:28s} {times[name]:.3f} s/step", flush=True)
    for name, t in times.items():
        store.run({"variant": name}, lambda t=t: {"seconds_per_step": round(t, 4), "speedup": round(times["fp32"] / t, 3)})
    best = min(times, key=times.get)  # type: ignore[arg-type]
    store.meta["profile_variant"] = best
    store.meta["profile"] = profile(teacher, data, base.replace(**VARIANTS[best]))
    store.meta["wall_seconds"] = round(time.time() - t_start, 1)
    store.finish(complete=True)


def render(path: str = "benchmarks/results/perf_kd.json") -> str:
    """Markdown table for BENCHMARKS.md."""
    import json
    from pathlib import Path

    d = json.loads(Path(path).read_text())
    out = ["| variant | s / KD step | speed-up vs fp32 |", "|---|---:|---:|"]
    out += [f"| {r['variant']} | {r['seconds_per_step']:.3f} | {r['speedup']:.2f}x |" for r in d["rows"]]
    prof = d["meta"].get("profile") or []
    if prof:
        out += ["", f"Where a step of `{d['meta']['profile_variant']}` goes (torch.profiler, self CPU time):", "",
                "| operator | ms / step | share |", "|---|---:|---:|"]
        out += [f"| `{r['op']}` | {r['self_ms_per_step']:.1f} | {100 * r['share']:.1f} % |" for r in prof[:8]]
    return "\n".join(out) + f"\n\nCommand: `{d['meta']['command']}`"


if __name__ == "__main__":
    main()
