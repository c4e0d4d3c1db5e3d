"""Deploy EfficientNet-Lite0: the W8A8 file (64 real sample1000 images) as int8 ONNX, checked in onnxruntime on val1300.

Run: python -m benchmarks.imagenet_export [--workdir DIR]
Runs `datafree quantize efficientnet_lite0 --calib imagenet:sample1000 --num-calib 64` and `datafree export ... --check
imagenet:val1300 --latency-batch 32 --reps 5 --json` as a user would, and writes
benchmarks/results/imagenet_lite0_export.json: the export's --json row (top-1 in onnxruntime and in the simulation,
prediction agreement, latency against the FP32 export at batch 1 and 32, sizes, fused kernels), with the previous
row kept under meta.previous, and the model's own arithmetic noise floor: the agreement of the simulation with itself
in float64, and of onnxruntime with its graph optimizations off (float kernels, no integer fusion) — what any two
correct implementations of this quantized model agree on. Needs the extras: pip install -e '.[imagenet,export]'.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from .common import cli_json, git_commit, machine

OUT = Path("benchmarks/results/imagenet_lite0_export.json")


def noise_floor(pt: Path, onnx: Path) -> dict:
    """Prediction agreement on val1300 between implementations of the same quantized model that differ only in
    floating-point order: the simulation in float32 and float64, onnxruntime's integer kernels and its float kernels."""
    import numpy as np
    import onnxruntime as ort
    import torch

    from datafree.compressors.artifact import load_any
    from datafree.core.utils import predict
    from datafree.data.real import load_dataset
    from datafree.models.record import record_of

    m = load_any(str(pt)).eval()
    data = load_dataset("imagenet:val1300", record_of(m).input_spec)
    t0 = time.time()
    preds = {"sim_float32": predict(m, data).numpy()}
    with torch.no_grad():
        m64 = m.double()
        preds["sim_float64"] = np.concatenate([m64(xb.double()).argmax(1).numpy() for xb in data.batches(64)])
    for name, level in (("ort_int8", ort.GraphOptimizationLevel.ORT_ENABLE_ALL),
                        ("ort_float_kernels", ort.GraphOptimizationLevel.ORT_DISABLE_ALL)):
        so = ort.SessionOptions()
        so.graph_optimization_level = level
        s = ort.InferenceSession(str(onnx), so, providers=["CPUExecutionProvider"])
        preds[name] = np.concatenate([s.run(None, {"input": xb.numpy()})[0].argmax(1) for xb in data.batches(64)])
    y = data.y.numpy()
    keys = list(preds)
    return {"top1": {k: round(100.0 * float((v == y).mean()), 3) for k, v in preds.items()},
            "agreement": {f"{a}|{b}": round(100.0 * float((preds[a] == preds[b]).mean()), 3)
                          for i, a in enumerate(keys) for b in keys[i + 1:]},
            "n": len(y), "seconds": round(time.time() - t0, 1)}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", help="where the .pt and .onnx files go (default: a temporary folder)")
    p.add_argument("--out", default=str(OUT))
    p.add_argument("--no-floor", action="store_true", help="skip the noise floor (the float64 simulation takes ~6 min)")
    a = p.parse_args(argv)
    work = Path(a.workdir) if a.workdir else Path(tempfile.mkdtemp(prefix="lite0_export_"))
    work.mkdir(parents=True, exist_ok=True)
    pt, onnx = work / "l0_w8a8.pt", work / "l0_w8a8.onnx"
    t0 = time.time()
    cli_json(["quantize", "efficientnet_lite0", "--calib", "imagenet:sample1000", "--num-calib", "64", "--no-estimate",
              "--out", str(pt)])
    t1 = time.time()
    row = cli_json(["export", str(pt), "--out", str(onnx), "--check", "imagenet:val1300", "--latency-batch", "32",
                    "--reps", "5"])
    row.update(calibrate_with="datafree", quantize_seconds=round(t1 - t0, 1), export_check_seconds=round(time.time() - t1, 1))
    if not a.no_floor:
        row["noise_floor"] = noise_floor(pt, onnx)
    out = Path(a.out)
    previous = None
    if out.is_file():
        old = json.loads(out.read_text())
        r = old["rows"][0]
        previous = {"commit": old["meta"]["commit"], **{k: r[k] for k in ("prediction_agreement", "top1_ort", "top1_sim")
                                                        if k in r}}
    meta = {"benchmark": "imagenet_lite0_export", "commit": git_commit(), "machine": machine(), "seed": 0,
            "command": "datafree quantize efficientnet_lite0 --calib imagenet:sample1000 --num-calib 64 --out "
                       "l0_w8a8.pt && datafree export l0_w8a8.pt --out l0_w8a8.onnx --check imagenet:val1300 "
                       "--latency-batch 32 --reps 5 --json  (python -m benchmarks.imagenet_export)",
            "complete": True,
            "what": "the unmodified EfficientNet-Lite0 (same-padding conv subclasses, drop-connect blocks), W8A8 "
                    "calibrated on 64 real sample1000 images, exported as int8 QDQ ONNX and checked in onnxruntime on "
                    "val1300", "previous": previous}
    out.write_text(json.dumps({"meta": meta, "rows": [row]}, indent=1) + "\n")
    print(json.dumps(row, indent=1))


if __name__ == "__main__":
    main()
