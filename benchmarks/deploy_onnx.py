"""Deployment: int8 ONNX files that onnxruntime runs on integer kernels, against the FP32 export of the same model.

Run: python -m benchmarks.deploy_onnx [--models resnet20 resnet56 mobilenetv2_cifar] [--kd-steps 300]
Writes benchmarks/results/deploy_onnx.json: {"meta": ..., "rows": [...]}, one row per (model, file):
  fp32           the FP32 export
  ours-w8a8      `datafree quantize` W8A8 calibrated on 512 bn-stats samples, exported by `datafree export`
  ours-w4a4-kd   W4A4 calibrated, then KD fine-tuned (--kd-steps) on the same 512 bn-stats samples
  ours-w4a4-kd-int8act  the same model exported with --int8-activations (weights on the 4-bit grid, activations on
                 the int8 grid of the same clipped ranges), so every convolution can run on integer kernels
  ort-synthetic  onnxruntime's quantize_static (QDQ, per-channel) with the 512 bn-stats samples as calibration reader
  ort-real       the same with 512 real training images (cifar10:train-exact)
with top-1 on test-exact and test-jpeg (onnxruntime), agreement with the PyTorch simulation (ours) and with the FP32
model, latency as a ratio to the FP32 file measured in the same process (batch 1 / 1 thread, batch 64 / 2 threads,
median of --reps), file bytes and the integer kernels onnxruntime used. Finished rows are kept (resume).
Then one `side-by-side` row per model: every file of that model timed again in one loop, interleaved round by round
(the smallest of 5 rounds' medians each), so the ratios between files share the machine state; ONNX files are kept
under --cache/deploy/MODEL/ for that.
A model without shared weights (mobilenetv2_cifar) needs --weights NAME=FILE.
"""
from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import numpy as np

from datafree import load_artifact, load_dataset, predict, quantize, save_artifact
from datafree.compressors.quant import QuantConfig
from datafree.compressors.quant.export import (
    check_export,
    export_onnx,
    median_latency,
    ort_predict,
    ort_quantize_static,
    ort_session,
)
from datafree.compressors.quant.graph import int8_activations_
from datafree.core.utils import top1
from datafree.kd.loop import KDConfig
from datafree.models import fingerprint, load_model
from datafree.models.record import record_of

from .common import CHECKPOINTS, RowStore, cached_set, command_line, data_root, git_commit, machine, pretrained

FILES = ("fp32", "ours-w8a8", "ours-w4a4-kd", "ours-w4a4-kd-int8act", "ort-synthetic", "ort-real")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["resnet20", "resnet56", "mobilenetv2_cifar"])
    p.add_argument("--files", nargs="+", default=list(FILES), choices=FILES)
    p.add_argument("--weights", nargs="*", default=[], metavar="NAME=FILE", help="weights of models not in the shared set")
    p.add_argument("--num", type=int, default=512, help="calibration samples (synthetic and real)")
    p.add_argument("--iterations", type=int, default=100, help="bn-stats synthesis iterations (sets shared with ptq/kw)")
    p.add_argument("--kd-steps", type=int, default=300)
    p.add_argument("--batch", type=int, default=64, help="the larger latency batch (run with 2 threads)")
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="benchmarks/results/deploy_onnx.json")
    p.add_argument("--cache", default="benchmarks/cache")
    a = p.parse_args(argv)
    root = data_root()
    weights = dict(w.split("=", 1) for w in a.weights)
    meta = {"benchmark": "deploy_onnx", "config": vars(a), "seed": a.seed, "commit": git_commit(), "machine": machine(),
            "command": command_line("benchmarks.deploy_onnx", a),
            "files": {"fp32": "FP32 export", "ours-w8a8": "datafree quantize W8A8, bn-stats calibration, fused layout",
                      "ours-w4a4-kd": f"datafree quantize W4A4 + {a.kd_steps} KD fine-tuning steps on bn-stats",
                      "ours-w4a4-kd-int8act": "the W4A4 KD model exported with --int8-activations",
                      "ort-synthetic": "onnxruntime quantize_static on the bn-stats samples",
                      "ort-real": "onnxruntime quantize_static on cifar10:train-exact samples"}}
    store = RowStore(a.out, meta, selection=("models", "files", "weights"))
    for name in a.models:
        if name in CHECKPOINTS:
            model = pretrained(name)
        elif name in weights:
            model = load_model(name, weights[name])
        else:
            print(f"skipping {name}: no shared checkpoint; pass --weights {name}=FILE")
            continue
        tests = {s: load_dataset(f"cifar10:test-{s}", record_of(model).input_spec, root) for s in ("exact", "jpeg")}
        fp_pred = predict(model, tests["exact"])
        syn, _ = cached_set(model, name, "bn-stats", a.num, a.iterations, a.seed, a.cache)
        real = load_dataset("cifar10:train-exact", record_of(model).input_spec, root).subset(a.num, a.seed)
        d = Path(a.cache) / "deploy" / name  # kept: the side-by-side pass times every file, also after a resume
        d.mkdir(parents=True, exist_ok=True)
        fp32 = export_onnx(model, d / "fp32.onnx")
        memo: dict = {}

        def build(kind: str):
            """The quantized simulation for one of our files (the W4A4 KD model is fine-tuned once per run)."""
            bits = 8 if kind == "ours-w8a8" else 4
            if bits not in memo:
                # the fine-tuned W4A4 model is kept, keyed by the FP32 weights and settings: reruns skip the fine-tuning
                keep = d / f"w4a4-kd{a.kd_steps}-n{a.num}-it{a.iterations}-s{a.seed}-{fingerprint(model)}.pt"
                if bits == 4 and keep.is_file():
                    memo[bits] = load_artifact(keep)
                else:
                    kd = KDConfig(steps=a.kd_steps, batch_size=64, lr=1e-4, seed=a.seed) if bits == 4 else None
                    memo[bits] = quantize(model, syn, QuantConfig(w_bits=bits, a_bits=bits, num_calib=a.num, ranges_from="samples"), kd=kd)
                    if bits == 4:
                        save_artifact(memo[bits], keep)
            sim = memo[bits]
            if kind.endswith("int8act"):
                sim = copy.deepcopy(sim)
                int8_activations_(sim)
            return sim

        def row(kind: str) -> dict:
            t0 = time.time()
            sim = None
            if kind == "fp32":
                path, sim = fp32, model
            elif kind.startswith("ours"):
                sim = build(kind)
                path = export_onnx(sim, d / f"{kind}.onnx")
            else:
                path = ort_quantize_static(fp32, d / f"{kind}.onnx", syn if kind == "ort-synthetic" else real)
            build_s = time.time() - t0
            r = check_export(path, sim if sim is not None else model, tests["exact"], fp32_path=fp32,
                             batch=a.batch, threads=2, reps=a.reps)
            ort_exact = ort_predict(ort_session(path), tests["exact"])
            ort_jpeg = ort_predict(ort_session(path), tests["jpeg"])
            out = {"top1_exact": round(100.0 * (ort_exact == tests["exact"].y).float().mean().item(), 2),
                   "top1_jpeg": round(100.0 * (ort_jpeg == tests["jpeg"].y).float().mean().item(), 2),
                   "agree_fp32": round(100.0 * (ort_exact == fp_pred).float().mean().item(), 2),
                   "bytes": r["bytes"], "bytes_fp32": r["bytes_fp32"],
                   "lat_b1_t1_ratio": r["latency"]["b1_t1"]["ratio"],
                   f"lat_b{a.batch}_t2_ratio": r["latency"][f"b{a.batch}_t2"]["ratio"],
                   "latency": r["latency"], "integer_ops": r["integer_ops"], "float_ops": r["float_ops"],
                   "build_seconds": round(build_s, 1)}
            if kind.startswith("ours"):
                out["agree_sim"] = r["prediction_agreement"]
                out["top1_sim_exact"] = r["top1_sim"]
            if kind == "ours-w4a4-kd":
                memo["top1_4"] = round(r["top1_sim"], 2)
            elif kind.endswith("int8act"):  # the b-bit simulation's top-1 (the ours-w4a4-kd row's, when run here)
                if "top1_4" not in memo:
                    memo["top1_4"] = round(top1(memo[4], tests["exact"]), 2)
                out["top1_sim_bbit_exact"] = memo["top1_4"]
            return out

        for kind in a.files:
            r = store.run({"model": name, "file": kind}, lambda kind=kind: row(kind))
            print(f"{name} {kind}: top-1 {r['top1_exact']:.2f} / {r['top1_jpeg']:.2f}, latency x{r['lat_b1_t1_ratio']} "
                  f"(b1) x{r[f'lat_b{a.batch}_t2_ratio']} (b{a.batch}), {r['bytes'] / 1024:.0f} KiB", flush=True)
        files = {k: d / f"{k}.onnx" for k in a.files if (d / f"{k}.onnx").is_file()}
        if "fp32" in files and len(files) > 1:
            r = store.run({"model": name, "file": "side-by-side", "timed": sorted(files)},
                          lambda: side_by_side(files, tests["exact"], a.batch, a.reps))
            print(f"{name} side by side: " + ", ".join(f"{k} x{v['b1_t1']} / x{v[f'b{a.batch}_t2']}"
                                                       for k, v in r["ratio_to_fp32"].items()), flush=True)
    store.finish(complete=set(a.files) == set(FILES) and all(m in CHECKPOINTS or m in weights for m in a.models))


def side_by_side(files: dict, data, batch: int, reps: int) -> dict:
    """Every file timed in one loop, interleaved: per (batch, threads) the smallest of 5 rounds' medians, as ms and
    as a ratio to the FP32 file."""
    ms: dict = {k: {} for k in files}
    for b, t in ((1, 1), (batch, 2)):
        x = data.x[:b].numpy().astype(np.float32)
        sessions = {k: ort_session(p, threads=t) for k, p in files.items()}
        rounds: dict = {k: [] for k in files}
        for _ in range(5):
            for k, s in sessions.items():
                rounds[k].append(median_latency(s, x, reps * (5 if b == 1 else 1)))
        for k in files:
            ms[k][f"b{b}_t{t}"] = round(1000 * min(rounds[k]), 4)
    ratio = {k: {c: round(v / ms["fp32"][c], 3) for c, v in ms[k].items()} for k in files}
    return {"ms": ms, "ratio_to_fp32": ratio}


if __name__ == "__main__":
    main()
