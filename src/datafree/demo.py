"""`datafree demo`: the seed's point on scikit-learn digits, no data files needed: at 2-bit weights, KD fine-tuning on
samples inverted from the BN statistics lands near real data and Gaussian noise far below; then an int8 file and its speed."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional

import torch

from .compressors.quant import QuantConfig, quantize
from .data.real import load_dataset
from .data.train import train_classifier_
from .evaluation.metrics import evaluate
from .kd.loop import KDConfig
from .models import create_model, input_spec_of, load_model
from .synth import make_config, synthesize

DEMO_METHODS = ("gaussian", "inception", "bn-stats")


def demo_teacher(out: Path, progress: bool = True) -> torch.nn.Module:
    """The demo's small BN-CNN trained on digits:train, cached under `out`."""
    path = out / "small_cnn_digits.pt"
    if path.is_file():
        return load_model("small_cnn", str(path))
    model = create_model("small_cnn")
    train = load_dataset("digits:train", input_spec_of(model))
    train_classifier_(model, train, epochs=30, progress=progress)
    out.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return load_model("small_cnn", str(path))


def plot_demo(rows: list[dict], path: Path, title: str) -> None:
    """Grouped bars: top-1 per calibration source, calibrated only and after KD fine-tuning, FP32 as a line (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fp32 = next(r["top1"] for r in rows if r["stage"] == "fp32")
    names = [r["source"] for r in rows if r["stage"] == "calibrate"]
    fig, ax = plt.subplots(figsize=(6.4, 3.8), dpi=120)
    for j, stage in enumerate(("calibrate", "kd-finetune")):
        ys = [next(r["top1"] for r in rows if r["source"] == n and r["stage"] == stage) for n in names]
        xs = [i + (j - 0.5) * 0.38 for i in range(len(names))]
        bars = ax.bar(xs, ys, width=0.36, label="calibrated" if stage == "calibrate" else "+ KD fine-tuning")
        ax.bar_label(bars, fmt="%.1f", fontsize=7)
    ax.axhline(fp32, color="k", ls=":", lw=1, label=f"FP32 {fp32:.1f}")
    ax.set_xticks(range(len(names)), names)
    ax.set_ylabel("top-1 on digits:test (%)")
    ax.set_ylim(0, 105)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def export_speed(teacher: torch.nn.Module, calib, test, out: Path) -> Optional[dict]:
    """W8A8 calibrated on `calib`, exported to int8 ONNX and timed against the FP32 export (None without onnxruntime)."""
    import importlib.util

    if importlib.util.find_spec("onnx") is None or importlib.util.find_spec("onnxruntime") is None:
        return None
    from .compressors.quant.export import check_export, export_onnx

    q8 = quantize(teacher, calib, QuantConfig(w_bits=8, a_bits=8, quantize_first_last=True, num_calib=len(calib)))
    path = export_onnx(q8, out / "small_cnn_w8a8.onnx")
    return check_export(path, q8, test, batch=256, threads=1, reps=20)


def run_demo(out: str = "demo_out", progress: bool = True, w_bits: int = 2, a_bits: int = 4, num: int = 512,
             iterations: int = 200, kd_steps: int = 150) -> list[dict]:
    """Train/cached teacher; quantize at W2A4 calibrated on real digits and on each synthetic method, then fine-tune
    each by KD on the same samples; print the table, plot it, and export an int8 file with its speed against FP32."""
    outp = Path(out)
    t0 = time.time()
    teacher = demo_teacher(outp, progress)
    spec = input_spec_of(teacher)
    test = load_dataset("digits:test", spec)
    real = load_dataset("digits:train", spec)
    print(f"teacher: small_cnn on scikit-learn digits (trained/cached in {time.time() - t0:.1f} s)")
    rows = [dict(source="FP32", stage="fp32", **evaluate(teacher, test))]
    cfg = QuantConfig(w_bits=w_bits, a_bits=a_bits, quantize_first_last=True, num_calib=num)
    sources = {"real digits:train": real.subset(num)}
    for m in DEMO_METHODS:
        ts = time.time()
        sources[m] = synthesize(teacher, m, make_config(m, num=num, iterations=iterations), out=str(outp / f"synthetic_{m}"),
                                progress=progress)
        print(f"  synthesized {num} {m} samples in {time.time() - ts:.1f} s -> {outp / f'synthetic_{m}' / 'grid.png'}")
    for name, data in sources.items():
        ts = time.time()
        qm = quantize(teacher, data, cfg)
        rows.append(dict(source=name, stage="calibrate", **evaluate(qm, test, teacher=teacher)))
        kd = KDConfig.preset("qat", steps=kd_steps, seed=0)
        qk = quantize(teacher, data, cfg, kd=kd, progress=False)
        rows.append(dict(source=name, stage="kd-finetune", **evaluate(qk, test, teacher=teacher)))
        print(f"  W{w_bits}A{a_bits} on {name}: calibrated and fine-tuned ({kd_steps} KD steps) in {time.time() - ts:.1f} s")
    label = f"W{w_bits}A{a_bits}"
    print(f"\n{'samples used to compress':22s} {label + ' calibrated':>15s} {'+ KD fine-tuning':>17s} {'size KiB':>9s}")
    print(f"{'(none: FP32)':22s} {rows[0]['top1']:15.2f} {'':>17s} {rows[0]['size_bits'] / 8192:9.1f}")
    for name in sources:
        c, k = (next(r for r in rows if r["source"] == name and r["stage"] == st) for st in ("calibrate", "kd-finetune"))
        print(f"{name:22s} {c['top1']:15.2f} {k['top1']:17.2f} {k['size_bits'] / 8192:9.1f}")
    print(f"(top-1 % on digits:test, n={len(test)}; every layer at {w_bits}-bit weights, {a_bits}-bit activations; "
          f"KD: {kd_steps} steps on the same {num} samples)")
    kd_top1 = {r["source"]: r["top1"] for r in rows if r["stage"] == "kd-finetune"}
    real_kd = kd_top1["real digits:train"]
    print(f"After KD fine-tuning: bn-stats samples {kd_top1['bn-stats']:.1f} vs real data {real_kd:.1f} "
          f"({kd_top1['bn-stats'] - real_kd:+.1f} pt); Gaussian noise {kd_top1['gaussian']:.1f} "
          f"({kd_top1['gaussian'] - real_kd:+.1f} pt).")
    plot_demo(rows, outp / "demo_results.png", f"small_cnn on digits, {label}: which samples compress it (FP32 dotted)")
    print(f"plot: {outp / 'demo_results.png'}")
    result: dict = {"rows": rows}
    exp = export_speed(teacher, sources["bn-stats"], test, outp)
    if exp is not None:
        lat = exp["latency"]
        b = next(v for k, v in lat.items() if not k.startswith("b1_"))
        print(f"\nint8 ONNX (W8A8 calibrated on bn-stats): {outp / 'small_cnn_w8a8.onnx'}, {exp['bytes'] / 1024:.1f} KiB "
              f"vs FP32 {exp['bytes_fp32'] / 1024:.1f} KiB; top-1 {exp['top1_ort']:.2f} % in onnxruntime "
              f"({exp['prediction_agreement']:.1f} % same predictions as PyTorch); latency batch {b['batch']}: "
              f"{b['ms']:.3f} ms vs FP32 {b['fp32_ms']:.3f} ms ({b['ratio']:.2f}x), batch 1: {lat['b1_t1']['ms']:.3f} vs "
              f"{lat['b1_t1']['fp32_ms']:.3f} ms ({lat['b1_t1']['ratio']:.2f}x); integer kernels: "
              f"{', '.join(f'{k} x{v}' for k, v in exp['integer_ops'].items())}")
        result["export"] = exp
    else:
        print("\n(int8 export skipped: pip install onnx onnxruntime)")
    print(f"total {time.time() - t0:.1f} s")
    result["seconds"] = round(time.time() - t0, 1)
    (outp / "demo_results.json").write_text(json.dumps(result, indent=2))
    return rows
