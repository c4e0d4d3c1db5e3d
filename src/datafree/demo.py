"""`datafree demo`: the whole pipeline on scikit-learn digits, no data files needed."""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from .data.real import load_dataset
from .metrics import evaluate
from .models import create_model, load_model
from .quant import QuantConfig, quantize
from .synth import make_config, synthesize
from .train import train_classifier_

DEMO_METHODS = ("gaussian", "inception", "bn-stats")


def demo_teacher(out: Path, progress: bool = True) -> torch.nn.Module:
    """The demo's small BN-CNN trained on digits:train, cached under `out`."""
    path = out / "small_cnn_digits.pt"
    if path.is_file():
        return load_model("small_cnn", str(path))
    model = create_model("small_cnn")
    train = load_dataset("digits:train", model.input_spec)
    train_classifier_(model, train, epochs=30, progress=progress)
    out.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return load_model("small_cnn", str(path))


def run_demo(out: str = "demo_out", progress: bool = True, w_bits: int = 4, a_bits: int = 4, num: int = 512,
             iterations: int = 200) -> list[dict]:
    """Train/cached teacher, then W4A4 calibrated on real digits and on each synthetic method; prints a table."""
    outp = Path(out)
    t0 = time.time()
    teacher = demo_teacher(outp, progress)
    spec = teacher.input_spec
    test = load_dataset("digits:test", spec)
    real = load_dataset("digits:train", spec)
    print(f"teacher: small_cnn on scikit-learn digits (trained/cached in {time.time() - t0:.1f} s)")
    rows = [dict(source="FP32 (no quantization)", **evaluate(teacher, test))]
    cfg = QuantConfig(w_bits=w_bits, a_bits=a_bits, quantize_first_last=True, num_calib=num)
    sources = {"real digits:train": real.subset(num)}
    for m in DEMO_METHODS:
        ts = time.time()
        sources[m] = synthesize(teacher, m, make_config(m, num=num, iterations=iterations), out=str(outp / f"synthetic_{m}"),
                                progress=progress)
        print(f"  synthesized {num} {m} samples in {time.time() - ts:.1f} s -> {outp / f'synthetic_{m}' / 'grid.png'}")
    for name, data in sources.items():
        qm = quantize(teacher, data, cfg)
        rows.append(dict(source=f"W{w_bits}A{a_bits} calibrated on {name}", **evaluate(qm, test, teacher=teacher)))
    print(f"\n{'model':50s} {'top-1 %':>8s} {'agree %':>8s} {'size KiB':>9s}")
    for r in rows:
        print(f"{r['source']:50s} {r['top1']:8.2f} {r.get('agreement', 100.0):8.2f} {r['size_bits'] / 8192:9.1f}")
    print(f"\n(digits:test, n={len(test)}; every layer at {w_bits} bits; total {time.time() - t0:.1f} s)")
    (outp / "demo_results.json").write_text(json.dumps(rows, indent=2))
    return rows
