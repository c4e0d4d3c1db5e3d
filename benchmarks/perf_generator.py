"""Generator speed: the generator methods' network in NCHW against channels-last, measured side by side in one run.

Run: python -m benchmarks.perf_generator [--reps 15]
Writes benchmarks/results/perf_generator.json. For each setting (MNIST: LeNet-5 teacher, width-16 generator, batch
256, as in the MNIST DAFL/RDSKD benchmark; CIFAR: ResNet-20 teacher, width-32 generator, batch 128) it times one
generator training step (G forward, teacher forward, backward through both, Adam), one sampling forward (no grad) and
the generator's first upsampling alone, alternating the two layouts rep by rep; medians. Random weights: the time does not depend on them.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from datafree.models import create_model
from datafree.models.record import record_of
from datafree.synth.generative import Generator

from .common import command_line, git_commit, machine

SETTINGS = {"mnist": ("lenet5", 100, 16, 256), "cifar": ("resnet20", 256, 32, 128)}  # teacher, latent, width, batch


def timed(fn) -> float:
    """Seconds of one call."""
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    p.add_argument("--reps", type=int, default=15)
    p.add_argument("--out", default="benchmarks/results/perf_generator.json")
    a = p.parse_args(argv)
    rows = []
    t_start = time.time()
    for name in a.settings:
        arch, latent, width, batch = SETTINGS[name]
        teacher = create_model(arch).eval().requires_grad_(False)
        nets = {}
        for layout, cl in (("nchw", False), ("channels_last", True)):
            torch.manual_seed(0)
            g = Generator(record_of(teacher).input_spec, latent, width, channels_last=cl)
            nets[layout] = (g, torch.optim.Adam(g.parameters(), 1e-3))
        times: dict[str, dict[str, list[float]]] = {k: {"step": [], "forward": [], "upsample": []} for k in nets}
        g0 = nets["nchw"][0]
        fmap = torch.randn(batch, 2 * width, g0.h0, g0.w0)  # the generator's first upsampling input
        maps = {"nchw": fmap, "channels_last": fmap.contiguous(memory_format=torch.channels_last)}

        def step(g, opt):
            loss = teacher(g(torch.randn(batch, latent))).logsumexp(1).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        def forward(g):
            with torch.no_grad():
                g(torch.randn(batch, latent))

        for g, opt in nets.values():  # warm-up (allocator, oneDNN primitive caches)
            step(g, opt)
            forward(g)
        for _ in range(a.reps):
            for layout, (g, opt) in nets.items():
                times[layout]["step"].append(timed(lambda: step(g, opt)))
                times[layout]["forward"].append(timed(lambda: forward(g)))
                times[layout]["upsample"].append(timed(lambda: torch.nn.functional.interpolate(maps[layout], scale_factor=2)))
        med = {k: {op: statistics.median(v) for op, v in d.items()} for k, d in times.items()}
        row = {"setting": name, "teacher": arch, "width": width, "latent": latent, "batch": batch,
               **{f"{k}_{op}_s": round(v, 5) for k, d in med.items() for op, v in d.items()},
               "step_speedup": round(med["nchw"]["step"] / med["channels_last"]["step"], 3),
               "forward_speedup": round(med["nchw"]["forward"] / med["channels_last"]["forward"], 3),
               "upsample_speedup": round(med["nchw"]["upsample"] / med["channels_last"]["upsample"], 3)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    out = {"meta": {"benchmark": "perf_generator", "config": vars(a), "seed": 0, "commit": git_commit(), "complete": True,
                    "machine": machine(), "wall_seconds": round(time.time() - t_start, 1),
                    "command": command_line("benchmarks.perf_generator", a)}, "rows": rows}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=1))


def render(path: str = "benchmarks/results/perf_generator.json") -> str:
    """Markdown table for BENCHMARKS.md."""
    d = json.loads(Path(path).read_text())
    out = ["| setting | batch | step NCHW (s) | step channels-last (s) | speed-up | forward NCHW (s) | "
           "forward channels-last (s) | speed-up | first upsampling NCHW / channels-last (ms) |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in d["rows"]:
        out.append(f"| {r['setting']} ({r['teacher']}, width {r['width']}) | {r['batch']} | {r['nchw_step_s']:.3f} | "
                   f"{r['channels_last_step_s']:.3f} | {r['step_speedup']:.2f}x | {r['nchw_forward_s']:.3f} | "
                   f"{r['channels_last_forward_s']:.3f} | {r['forward_speedup']:.2f}x | "
                   f"{1e3 * r['nchw_upsample_s']:.2f} / {1e3 * r['channels_last_upsample_s']:.2f} |")
    return "\n".join(out) + f"\n\nCommand: `{d['meta']['command']}` ({d['meta']['machine'].get('cpu', '')})"


if __name__ == "__main__":
    main()
