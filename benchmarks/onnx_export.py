"""Int8 ONNX export check: W8A8 ResNet-20 in onnxruntime vs the PyTorch simulation, size and latency vs FP32 ONNX.

Latency: the smallest of 3 interleaved medians (`median_latency`, the same measure as `datafree export --check`).

Run: python -m benchmarks.onnx_export
Writes benchmarks/results/onnx_export.json.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from datafree import load_dataset, predict, quantize
from datafree.compressors.quant import QuantConfig
from datafree.compressors.quant.export import export_onnx, median_latency, ort_predict, ort_session
from datafree.models.record import record_of

from .common import cached_set, data_root, git_commit, machine, pretrained


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", default="resnet20")
    p.add_argument("--calib", default="bn-stats", help="synthetic method of the cached 512-sample set used to calibrate")
    p.add_argument("--batch", type=int, default=64, help="batch for the latency measurement")
    p.add_argument("--reps", type=int, default=30)
    p.add_argument("--out", default="benchmarks/results/onnx_export.json")
    p.add_argument("--layout", default="fused", choices=["fused", "inputs"],
                   help="activation layout of the simulation (inputs: the per-layer-input layout of tables made before the fused one)")
    a = p.parse_args(argv)
    t_start = time.time()
    model = pretrained(a.model)
    data, _ = cached_set(model, a.model, a.calib, 512, 100, 0)
    q = quantize(model, data, QuantConfig(w_bits=8, a_bits=8, layout=a.layout))
    test = load_dataset("cifar10:test-exact", record_of(model).input_spec, data_root())
    with tempfile.TemporaryDirectory() as d:
        f_int8 = export_onnx(q, Path(d) / "int8.onnx")
        f_fp32 = export_onnx(model, Path(d) / "fp32.onnx")
        s8, s32 = ort_session(f_int8), ort_session(f_fp32)
        sim = predict(q, test)
        ort = ort_predict(s8, test)
        x = test.x[: a.batch].numpy().astype(np.float32)
        lat8, lat32 = [], []
        for _ in range(3):  # interleaved so both see the same machine state
            lat32.append(median_latency(s32, x, a.reps))
            lat8.append(median_latency(s8, x, a.reps))
        r = {"model": a.model, "calib": f"{a.calib} (512 samples)",
             "top1_sim": round(100.0 * (sim == test.y).float().mean().item(), 3),
             "top1_ort": round(100.0 * (ort == test.y).float().mean().item(), 3),
             "prediction_agreement": round(100.0 * (sim == ort).float().mean().item(), 3),
             "bytes_fp32": f_fp32.stat().st_size, "bytes_int8": f_int8.stat().st_size,
             "latency_fp32_ms": round(1000 * min(lat32), 3), "latency_int8_ms": round(1000 * min(lat8), 3),
             "latency_ratio": round(min(lat8) / min(lat32), 3), "latency_batch": a.batch}
    out = {"meta": {"benchmark": "onnx_export", "config": vars(a), "seed": 0, "commit": git_commit(), "machine": machine(),
                    "wall_seconds": round(time.time() - t_start, 1),
                    "command": f"python -m benchmarks.onnx_export --model {a.model} --calib {a.calib} --batch {a.batch} --reps {a.reps} "
                               f"--layout {a.layout}"},
           "result": r}
    out.update({k: r[k] for k in ("top1_sim", "top1_ort", "bytes_fp32", "bytes_int8", "latency_ratio")})
    Path(a.out).write_text(json.dumps(out, indent=1))
    print(json.dumps(r))


if __name__ == "__main__":
    main()
