"""Synthesis speed: the library's bn-stats path against a naive reference loop, measured in one run.

Run: python benchmarks/perf_synthesis.py [--models resnet20 resnet56] [--batch 128] [--iters 40]
Writes benchmarks/results/perf_synthesis.json. The naive loop below is the baseline, kept here on purpose:
plain Adam on pixels, a Python list of per-layer hooks computing mean and variance separately, fp32 NCHW,
teacher parameters left with requires_grad=True (as in most research code). Both optimize the same
KL-of-Gaussians BN loss from the same starting noise with the same lr and no jitter, so the final losses
can be compared (equal sample quality).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere
from benchmarks.common import git_commit, machine, pretrained  # noqa: E402
from datafree.core.utils import frozen_eval
from datafree.models.record import record_of
from datafree.synth import make_config
from datafree.synth.base import StepCallback
from datafree.synth.bn_stats import BNStatsSynthesizer


def naive_loop(model: nn.Module, x0: torch.Tensor, iters: int, lr: float, lo, hi) -> tuple[float, float]:
    """Reference: seconds per iteration and final loss."""
    model.eval()
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    stats: list = [None] * len(bns)
    hooks = []
    for i, bn in enumerate(bns):
        def hook(mod, inp, out, i=i):
            x = inp[0]
            stats[i] = (x.mean(dim=[0, 2, 3]), x.var(dim=[0, 2, 3], unbiased=False))
        hooks.append(bn.register_forward_hook(hook))
    x = x0.clone().requires_grad_(True)
    opt = torch.optim.Adam([x], lr=lr, betas=(0.5, 0.9))
    loss_v, t0 = 0.0, 0.0
    for it in range(iters + 2):
        if it == 2:
            t0 = time.perf_counter()
        opt.zero_grad()
        model(x)
        loss = 0.0
        for bn, (mu, var) in zip(bns, stats):
            v_hat, v = bn.running_var + bn.eps, var + bn.eps
            kl = 0.5 * torch.log(v / v_hat) - 0.5 + (v_hat + (bn.running_mean - mu) ** 2) / (2 * v)
            loss = loss + kl.mean()
        loss.backward()
        opt.step()
        with torch.no_grad():
            x.copy_(torch.max(torch.min(x, hi), lo))
        loss_v = float(loss)
    dt = (time.perf_counter() - t0) / iters
    for h in hooks:
        h.remove()
    model.zero_grad(set_to_none=True)
    return dt, loss_v


def ours(model: nn.Module, x0: torch.Tensor, iters: int, lr: float, **kw) -> tuple[float, float]:
    """The library path (BNStatsSynthesizer.optimize_pixels), timed after 2 warm-up iterations."""
    cfg = make_config("bn-stats", num=len(x0), batch_size=len(x0), iterations=iters + 2, lr=lr, jitter=0, flip=False, **kw)
    times: list[float] = []

    class Clock(StepCallback):
        def __call__(self, n, parts=None):
            super().__call__(n, parts)
            times.append(time.perf_counter())

    with frozen_eval(model):
        s = BNStatsSynthesizer(model, cfg)
        s.init_batch = lambda n, gen, std=1.0: x0.clone()  # same start as the naive loop
        clock = Clock()
        try:
            s.optimize_pixels(torch.zeros(len(x0), dtype=torch.long), torch.Generator().manual_seed(0), clock)
        finally:
            s.close()
    return (times[-1] - times[1]) / iters, clock.last["bn"]


def conv_flops(model: nn.Module, shape: tuple) -> int:
    """Forward FLOPs (2 per multiply-add) of conv and linear layers for one input."""
    total = 0
    hooks = []

    def hook(m, inp, out):
        nonlocal total
        if isinstance(m, nn.Conv2d):
            total += 2 * out.numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]
        else:
            total += 2 * m.in_features * m.out_features * out.shape[0]
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            hooks.append(m.register_forward_hook(hook))
    with torch.no_grad():
        model(torch.zeros(1, *shape))
    for h in hooks:
        h.remove()
    return total


def matmul_gflops(n: int = 1024, reps: int = 20) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n ** 3 * reps / (time.perf_counter() - t0) / 1e9


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["resnet20", "resnet56"])
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--iters", type=int, default=40)
    p.add_argument("--lr", type=float, default=0.25)
    p.add_argument("--variants", nargs="+", default=["library", "channels_last", "bf16", "channels_last_bf16"],
                   choices=["library", "channels_last", "bf16", "channels_last_bf16"])
    p.add_argument("--out", default="benchmarks/results/perf_synthesis.json")
    a = p.parse_args()
    t_start = time.time()
    gmm = matmul_gflops()
    rows = []
    for name in a.models:
        model = pretrained(name)
        spec = record_of(model).input_spec
        lo, hi = (t for t in spec.pixel_bounds())
        x0 = torch.randn(a.batch, *spec.shape, generator=torch.Generator().manual_seed(0)).clamp(lo.min(), hi.max())
        x0 = torch.max(torch.min(x0, hi), lo)
        fwd = conv_flops(model, spec.shape) * a.batch
        dt_naive, loss_naive = naive_loop(model, x0, a.iters, a.lr, lo, hi)
        row = {"model": name, "batch": a.batch, "iters": a.iters, "naive_img_it_s": round(a.batch / dt_naive, 1),
               "naive_final_loss": round(loss_naive, 5), "fwd_gflop_per_iter": round(fwd / 1e9, 3)}
        best = None
        for v in a.variants:
            kw = {"channels_last": "channels_last" in v, "bf16": "bf16" in v}
            dt, loss = ours(model, x0, a.iters, a.lr, **kw)
            row[f"{v}_img_it_s"] = round(a.batch / dt, 1)
            row[f"{v}_final_loss"] = round(loss, 5)
            row[f"{v}_gflops"] = round(2 * fwd / dt / 1e9, 2)  # forward + input-gradient backward
            if best is None or dt < best[1]:
                best = (v, dt, loss)
        row.update(ours_variant=best[0], ours_img_it_s=round(a.batch / best[1], 1), ours_final_loss=round(best[2], 5),
                   speedup=round(dt_naive / best[1], 2), gflops_achieved=round(2 * fwd / best[1] / 1e9, 2),
                   gflops_matmul=round(gmm, 1))
        rows.append(row)
        print(json.dumps(row), flush=True)
    out = {"meta": {"benchmark": "perf_synthesis", "config": vars(a), "seed": 0, "commit": git_commit(),
                    "machine": machine(), "wall_seconds": round(time.time() - t_start, 1),
                    "command": "python benchmarks/perf_synthesis.py " + " ".join(
                        f"--{k} {' '.join(map(str, v)) if isinstance(v, list) else v}" for k, v in vars(a).items() if k != "out")},
           "rows": rows}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
