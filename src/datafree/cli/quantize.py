"""`datafree quantize` and `datafree export`."""
from __future__ import annotations

import argparse
import time
from typing import Any

from ..models.record import record_of
from .common import (
    FILE_HELP,
    Context,
    check_out,
    command,
    dataset,
    emit,
    kd_steps,
    load_model,
    model_args,
    output_args,
    save,
    source,
    val_data,
)
from .options import _kd_config, _kd_options, _quant_config, _quant_options, estimate_args, estimate_into


def cmd_quantize(a: argparse.Namespace) -> int:
    check_out(a, "file")
    from ..compressors.base import run_compressor

    cfg = _quant_config(a, seed=a.seed)
    if a.max_drop is not None:
        return _autopilot(a, cfg)
    model = load_model(a)
    calib = source(a, a.calib, model, cfg.num_calib)
    bn_data = source(a, a.bn_data, model, cfg.num_calib) if a.bn_data else None
    kd = None
    if a.finetune_epochs or a.finetune_steps:
        steps = kd_steps(a.finetune_steps, a.finetune_epochs, len(calib), a.kd__batch_size)
        kd = _kd_config(a, steps, batch_size=min(a.kd__batch_size, len(calib)))
    t0 = time.time()
    res = run_compressor(model, "quantize", calib, cfg, bn_data=bn_data, kd=kd, val=val_data(a, model) if kd else None,
                         progress=not a.no_progress)
    seconds = round(time.time() - t0, 2)
    info: dict[str, Any] = {"out": a.out, "calib": a.calib, "w_bits": cfg.w_bits, "a_bits": cfg.a_bits, "seconds": seconds}
    est_line = estimate_into(a, res.model, model, info)
    save(res.model, a.out, teacher=model, extra={"calib": a.calib, "seconds": seconds, "estimate": info.get("estimate")})
    human = f"saved W{cfg.w_bits}A{cfg.a_bits} model calibrated on {a.calib} ({len(calib)} samples) to {a.out}"
    plan = record_of(res.model).quant_plan or []
    if "mixed" in res.report:
        from ..compressors.quant.mixed import plan_table

        mx = res.report["mixed"]
        info.update(avg_bits=round(mx["avg_bits"], 3), plan=[{k: e[k] for k in ("name", "w_bits", "a_bits")} for e in plan])
        human = (f"saved mixed-precision model (weights {mx['avg_bits']:.2f} bits on average, activations "
                 f"{cfg.a_bits} bits) calibrated on {a.calib} ({len(calib)} samples) to {a.out}\n"
                 + plan_table(plan, mx["sensitivity"], mx["params"]))
    if "reconstruct" in res.report:
        rec = info["reconstruct"] = res.report["reconstruct"]
        human += (f"\n{cfg.recon.method}: {len(rec)} blocks, output MSE {sum(r['mse_before'] for r in rec):.4g} -> "
                  f"{sum(r['mse_after'] for r in rec):.4g} (summed over blocks)")
    if "gptq" in res.report:
        g = info["gptq"] = res.report["gptq"]
        human += (f"\ngptq: {g['layers']} layers rounded on {g['samples']} samples, layer output error "
                  f"{g['output_error_nearest']:.4g} (nearest) -> {g['output_error_gptq']:.4g} (summed over layers)")
    if a.eval:
        from ..evaluation.metrics import evaluate

        r = evaluate(res.model, dataset(a, a.eval, model), teacher=model)
        info.update(r)
        human += f"\n{a.eval}: top-1 {r['top1']:.2f}% (FP32 {r['teacher_top1']:.2f}%), agreement {r['agreement']:.2f}%"
    emit(a, info, human + est_line)
    return 0


def _autopilot(a: argparse.Namespace, cfg: Any) -> int:
    """`quantize --max-drop D`: the smallest configuration whose estimated drop is within D, and what was tried."""
    import sys

    from ..core.errors import DatafreeError
    from ..evaluation.autopilot import autopilot, trials_table
    from ..evaluation.estimate import LARGE_IMAGE, estimate_line, held_out_set
    from ..models import input_spec_of

    if not a.max_drop >= 0:
        raise DatafreeError(f"--max-drop must be a drop in points >= 0, got {a.max_drop}")
    if cfg.mixed.on:
        raise DatafreeError("--max-drop and --target-size/--avg-bits both choose the model's size; give one of them")
    if a.finetune_epochs or a.finetune_steps:
        raise DatafreeError("--max-drop searches calibrated configurations; drop --finetune-epochs/--finetune-steps")
    if a.no_estimate:
        raise DatafreeError("--max-drop works from the estimate; drop --no-estimate")
    if a.bn_data:
        raise DatafreeError("--max-drop does not take --bn-data; drop it")
    model = load_model(a)
    calib = source(a, a.calib, model, cfg.num_calib)
    t0 = time.time()
    held = held_out_set(model, a.seed, progress=not a.no_progress)
    spec = input_spec_of(model)
    recon = spec.shape[1] * spec.shape[2] < LARGE_IMAGE
    quiet = a.json or a.no_progress
    log = (lambda m: None) if quiet else (lambda m: print(m, file=sys.stderr, flush=True))
    log(f"autopilot: smallest model estimated within {a.max_drop:g} pt on {held.name}"
        + ("" if recon else " (224 px class inputs: GPTQ rounding is tried, BRECQ reconstruction is not, it takes many minutes on a CPU)"))
    best, trials = autopilot(model, calib, a.max_drop, cfg, held, recon=recon, log=log, seed=a.seed)
    seconds = round(time.time() - t0, 2)
    info: dict[str, Any] = {"out": a.out, "calib": a.calib, "max_drop": a.max_drop, "chosen": best.label,
                            "size_bytes": best.size_bytes, "estimate": best.estimate, "seconds": seconds,
                            "trials": [t.row() for t in trials]}
    save(best.model, a.out, teacher=model, extra={"calib": a.calib, "seconds": seconds, "estimate": best.estimate,
                                                   "autopilot": {"max_drop": a.max_drop, "trials": info["trials"]}})
    human = (f"autopilot (--max-drop {a.max_drop:g} pt): tried {len(trials)} configurations in {seconds:.0f} s\n"
             + trials_table(trials, best, a.max_drop)
             + f"\nsaved {best.label} ({best.size_bytes / 1024:.1f} KiB) calibrated on {a.calib} ({len(calib)} samples) "
               f"to {a.out}\n" + estimate_line(best.estimate))
    if a.eval:
        from ..evaluation.metrics import evaluate

        r = evaluate(best.model, dataset(a, a.eval, model), teacher=model)
        info.update(r)
        human += (f"\n{a.eval}: top-1 {r['top1']:.2f}% (FP32 {r['teacher_top1']:.2f}%, measured drop "
                  f"{r['teacher_top1'] - r['top1']:.2f} pt), agreement {r['agreement']:.2f}%")
    emit(a, info, human)
    return 0


def cmd_export(a: argparse.Namespace) -> int:
    check_out(a, "file")
    from ..compressors.quant.export import ExportOptions, check_lines, export_model

    model = load_model(a)
    opts = ExportOptions(opset=a.opset, int8_activations=a.int8_activations, calibrate_with=a.calibrate_with,
                         num_calib=a.num_calib, latency_batch=a.latency_batch, ort_threads=a.ort_threads, reps=a.reps)
    calib = None
    if a.calibrate_with == "onnxruntime":
        opts.validate(model, a.calib)
        calib = source(a, a.calib, model, a.num_calib)
    check = dataset(a, a.check, model) if a.check else None
    info = export_model(model, a.out, opts, calib=calib, check=check, calib_name=a.calib)
    human = f"wrote {info['out']} ({info['bytes'] / 1024:.1f} KiB): {info['kind']}"
    if check is not None:
        human += "\n" + "\n".join(check_lines(info, a.check))
    info.pop("kind")
    emit(a, info, human)
    return 0


def add(sub: Any, ctx: Context) -> None:
    """Register `quantize` and `export`."""
    s = command(sub, "quantize", cmd_quantize, "post-training quantization calibrated on any data source",
                "Fold BN, quantize weights per output channel (MSE-optimal clipping) and inputs of every conv/linear "
                "per tensor, calibrated on SOURCE; save one file that `datafree evaluate` loads. First and last layer "
                "stay at 8 bits unless --quantize-first-last.")
    model_args(s)
    s.add_argument("--calib", default="bn-stats", metavar="SOURCE",
                   help=f"SyntheticSet directory, a method ({', '.join(ctx.methods)}) run on the fly, or a dataset spec "
                        f"({ctx.specs}) (default: bn-stats)")
    _quant_options(s)
    s.add_argument("--max-drop", type=float, metavar="D",
                   help="autopilot: search bit widths (uniform W4A4 ... W8A8, then GPTQ rounding of the failing "
                        "widths, widest first while it passes, and only where it fails per-layer mixed precision "
                        "between the two uniform widths around the budget and BRECQ for small inputs) "
                        "and save the smallest model whose estimated top-1 drop is <= D points, with a table of what "
                        "was tried; --w-bits/--a-bits are chosen, --target-size/--avg-bits are refused")
    estimate_args(s)
    s.add_argument("--bn-data", metavar="SOURCE", help="data for BN re-estimation (default: --calib)")
    s.add_argument("--finetune-epochs", type=int, default=0,
                   help="quantization-aware KD fine-tuning: passes over the calibration data (0 = calibration only)")
    s.add_argument("--finetune-steps", type=int, default=0, help="fine-tuning steps (overrides --finetune-epochs)")
    _kd_options(s, "qat", ["lr", "temperature", "batch_size", "augment", "val_every"])
    output_args(s, out="output file (.pt)", seed="seed for sample selection and on-the-fly synthesis",
                eval="also evaluate on this real dataset", val="real data to show validation accuracy during fine-tuning")

    s = command(sub, "export", cmd_export, "export a quantized file (or a model) to ONNX",
                "Write an ONNX file: a quantized model becomes a QuantizeLinear/DequantizeLinear graph with int8 "
                "weights that onnxruntime runs; a plain model is exported in FP32. Needs onnx and onnxruntime "
                "(pip install 'datafree[export]').")
    model_args(s, "model", help_extra=FILE_HELP)
    s.add_argument("--opset", type=int, default=13, help="ONNX opset (>= 13 for per-channel Q/DQ)")
    s.add_argument("--check", metavar="DATASET_SPEC",
                   help="report what the file gives: onnxruntime vs PyTorch top-1 and prediction agreement on this real "
                        "dataset, latency against an FP32 export of the same graph (batch 1 / 1 thread and "
                        "--latency-batch / --ort-threads, median of --reps runs), file sizes, and which nodes onnxruntime "
                        "turned into integer kernels")
    s.add_argument("--latency-batch", type=int, default=64, help="the larger batch of the latency check")
    s.add_argument("--ort-threads", type=int, default=2, help="onnxruntime threads for the larger-batch latency check")
    s.add_argument("--reps", type=int, default=20, help="timed runs per latency measurement (median)")
    s.add_argument("--calibrate-with", choices=("datafree", "onnxruntime"), default="datafree",
                   help="datafree: export the model's own numbers (calibrated / KD fine-tuned / sub-8-bit, from "
                        "`datafree quantize`); onnxruntime: give an FP32 model and let onnxruntime's quantize_static "
                        "quantize it with --calib as its calibration reader")
    s.add_argument("--calib", metavar="SOURCE", help="calibration data for --calibrate-with onnxruntime: a synthetic set "
                                                     "directory, a synthesis method or a dataset spec")
    s.add_argument("--num-calib", type=int, default=512, help="calibration samples for --calibrate-with onnxruntime")
    s.add_argument("--int8-activations", action="store_true",
                   help="for sub-8-bit files (W4A4, W3A3): ship activations on the int8 grid spanning each calibrated "
                        "clipped range, weights kept on their b-bit grid, so onnxruntime runs every convolution on "
                        "integer kernels (int8 speed; the b-bit activation clip otherwise stays a float op). The file "
                        "then differs from the b-bit simulation: --check compares it with the widened simulation and "
                        "also reports the b-bit one")
    output_args(s, out="output .onnx file", seed="seed for the calibration subset")
