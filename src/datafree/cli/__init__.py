"""The `datafree` command: subcommands mirror the library verbs."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Optional, Sequence

from .options import (_configured, _hash_config, _hash_options, _kd_config, _kd_options, _quant_config,  # noqa: F401
                      _quant_options, _synth_config, _synth_options)
from ..core import parallel
from ..core.errors import DatafreeError, first_line

EXIT_USAGE = 2  # bad input: an option, a file, a dataset spec
EXIT_INTERNAL = 3  # a defect of datafree (reported as an internal error)


def _model_args(p: argparse.ArgumentParser, positional: str = "model", help_extra: str = "") -> None:
    p.add_argument("model", metavar=positional.upper(),
                   help="zoo model name (see `datafree list`) or path/to/file.py:factory" + help_extra)
    p.add_argument("--weights", help="state dict or checkpoint (.th/.pt), loaded with weights_only=True")
    p.add_argument("--num-classes", type=int, help="number of classes (default: the model's own)")
    p.add_argument("--input-shape", help="for user models: C,H,W (e.g. 3,32,32)")
    p.add_argument("--mean", help="for user models: per-channel normalization mean, comma-separated")
    p.add_argument("--std", help="for user models: per-channel normalization std, comma-separated")
    _model_file_arg(p)


def _model_file_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model-file", metavar="FILE.py:FACTORY",
                   help="for a file made from your own model: its definition (a file never chooses code to run; the "
                        "architecture is checked against the fingerprint stored in the file)")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-root", help="folder with the data sets (default: $DATAFREE_DATA)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda, cuda:1 (default: cpu)")
    p.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _numbers(s: Optional[str], what: str, kind: type = float) -> Optional[tuple]:
    """Comma-separated numbers of `kind` (None stays None); for int, `1.7` or `3.0` is refused, never truncated."""
    if s is None:
        return None
    try:
        return tuple(kind(v) for v in s.split(","))
    except ValueError:
        noun = "integers" if kind is int else "numbers"
        raise DatafreeError(f"{what} must be comma-separated {noun}, got {s!r}") from None


def _load_model(a: argparse.Namespace, name: Optional[str] = None, weights: Optional[str] = None,
                input_spec: Any = None, num_classes: Optional[int] = None):
    import torch

    from ..models import InputSpec, load_model

    spec = input_spec
    if name is None and (a.input_shape or a.mean or a.std):
        shape = _numbers(a.input_shape, "--input-shape", int)
        if not (shape and a.mean and a.std and a.num_classes):
            raise DatafreeError("--input-shape, --mean, --std and --num-classes go together; give all four")
        try:
            spec = InputSpec(shape, _numbers(a.mean, "--mean"), _numbers(a.std, "--std"), a.num_classes)
        except DatafreeError as e:
            raise DatafreeError(f"bad input spec: {e}") from None
    if name is None:
        name, weights, num_classes = a.model, a.weights, a.num_classes
        if getattr(a, "model_file", None) and not os.path.isfile(name):
            raise DatafreeError(f"--model-file is for files written by datafree; {name} is not one")
        if os.path.isfile(name):  # a file written by datafree: compress it further (transforms chain)
            from ..compressors.artifact import build_artifact, read_artifact

            obj = read_artifact(name)
            if obj is None:
                raise DatafreeError(f"{name} is not a model file written by datafree; give a zoo name or file.py:factory "
                                    "with --weights")
            if weights:
                raise DatafreeError(f"{name} is a datafree artifact and holds its own weights; drop --weights")
            m = build_artifact(obj, name, getattr(a, "model_file", None))
            _check_finite(m, name)
            return m.to(torch.device(a.device))
    model = load_model(name, weights, num_classes=num_classes, input_spec=spec)
    _check_finite(model, weights or name)
    return model.to(torch.device(a.device))


def _check_finite(model: Any, where: str) -> None:
    """Refuse weights with NaN or infinite values (they would be quantized, distilled and saved as if fine)."""
    import torch

    bad = [(k, int((~torch.isfinite(v)).sum())) for k, v in model.state_dict().items()
           if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        k, n = bad[0]
        more = f" and {len(bad) - 1} more tensors" if len(bad) > 1 else ""
        raise DatafreeError(f"{where} holds NaN or infinite values ({n} in {k}{more}); the model is broken — use the "
                            "weights from before the training run that diverged")


def _setup(a: argparse.Namespace) -> None:
    import torch

    if a.threads is not None and a.threads < 1:
        raise DatafreeError(f"--threads must be >= 1, got {a.threads}")
    if a.threads:
        torch.set_num_threads(a.threads)
    a.device = parallel.init(a.device)  # under torchrun: join the process group; cuda -> cuda:LOCAL_RANK
    if a.device != "cpu":
        try:
            torch.empty(1, device=a.device)
        except (RuntimeError, AssertionError) as e:
            raise DatafreeError(f"device {a.device!r} is not available ({first_line(e)}); use --device cpu") from None


def _emit(a: argparse.Namespace, obj: dict, human: str) -> None:
    if not parallel.is_main():  # under torchrun, rank 0 reports for the job
        return
    if getattr(a, "json", False):
        print(json.dumps(obj))
    else:
        print(human)


# -- subcommands ---------------------------------------------------------------------------------

def _check_out(a: argparse.Namespace, kind: str = "file", attr: str = "out",
               inputs: Sequence[str] = ("weights", "model", "student_weights", "calib", "bn_data", "data")) -> None:
    """Before any work: --out must be writable where the user asked, of the right kind, and no input of the command."""
    out = getattr(a, attr, None)
    if not out:
        return
    flag = "--" + attr.replace("_", "-")
    p = Path(out)
    if kind == "file" and p.is_dir():
        raise DatafreeError(f"{flag} {out} is a directory; give a file path (e.g. {p / 'model.pt'})")
    if kind == "dir" and p.exists() and not p.is_dir():
        raise DatafreeError(f"{flag} {out} is a file, but this writes a directory; give a directory path")
    anc = p.parent if kind == "file" or not p.exists() else p
    while not anc.exists() and anc != anc.parent:
        anc = anc.parent
    if not anc.is_dir():
        raise DatafreeError(f"{flag} {out} lies under {anc}, which is a file, not a directory; choose another path")
    if not os.access(anc, os.W_OK):
        raise DatafreeError(f"cannot write {flag} {out}: {anc} is not writable (read-only?); choose another path")
    if p.exists():
        for name in inputs:
            v = getattr(a, name, None)
            if isinstance(v, str) and os.path.exists(v) and os.path.samefile(v, p):
                raise DatafreeError(f"{flag} {out} is also the input --{name.replace('_', '-')}; writing there would "
                                    f"replace it — choose another {flag}")


def cmd_list(a: argparse.Namespace) -> int:
    from ..data.real import DATASET_SPECS
    from ..models import MODELS
    from ..synth import SYNTHESIZERS

    print("models:")
    for n in MODELS.names():
        print(f"  {n:20s} {(MODELS.get(n).__doc__ or '').strip()}")
    print("synthesis methods:")
    for n in SYNTHESIZERS.names():
        print(f"  {n:20s} {(SYNTHESIZERS.get(n).__doc__ or '').strip().splitlines()[0]}")
    from ..compressors.artifact import COMPRESSORS

    print("compressors (each writes one artifact format that evaluate/export read):")
    for n in COMPRESSORS.names():
        print(f"  {n:20s} {COMPRESSORS.get(n).summary}")
    print("dataset specs:")
    for k, v in DATASET_SPECS.items():
        print(f"  {k:20s} {v}")
    return 0


def cmd_synthesize(a: argparse.Namespace) -> int:
    _check_out(a, "dir")
    from ..data.synthetic import read_manifest
    from ..evaluation.metrics import teacher_view
    from ..synth import SYNTHESIZERS, synthesize

    model = _load_model(a)
    if a.teachers:
        model = _ensemble(a, model)
    elif a.method == "mixmix":
        if parallel.is_main():
            print("note: mixmix with one teacher is data mixing only; add --teachers for feature mixing", file=sys.stderr)
    cfg = _synth_config(a, a.method)
    t0 = time.time()
    data = synthesize(model, a.method, cfg, out=a.out, progress=not a.no_progress, overwrite=a.overwrite)
    man = read_manifest(a.out)
    view = teacher_view(data, SYNTHESIZERS.get(a.method).class_conditional)
    info = {"out": a.out, "method": a.method, "num": len(data), "seconds": man.get("seconds"),
            "wall_seconds": round(time.time() - t0, 2), "config": cfg.to_dict(), **view}
    agree = view["target_agreement"]
    msg = "" if agree is None else f"; the teacher classifies {agree:.1f} % as their target class"
    if agree is not None and agree < 50:
        msg += " — low: " + ("lower --bn-weight or " if "deepinversion" in a.method else "") + "raise --iterations"
    _emit(a, info, f"wrote {len(data)} {a.method} samples to {a.out} (grid: {a.out}/grid.png, "
                   f"{man.get('seconds')} s of synthesis{msg})")
    return 0


def _ensemble(a: argparse.Namespace, first: Any) -> Any:
    """MODEL plus the --teachers pool (NAME:WEIGHTS or file.py:factory:WEIGHTS, or one .txt file listing them)."""
    from ..models.ensemble import Ensemble, parse_teacher_ref

    refs = list(a.teachers)
    if len(refs) == 1 and refs[0].endswith(".txt"):
        if not os.path.isfile(refs[0]):
            raise DatafreeError(f"--teachers list {refs[0]} not found")
        refs = [ln.strip() for ln in Path(refs[0]).read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    members = [first]
    spec = first.input_spec
    for ref in refs:
        name, weights = parse_teacher_ref(ref)
        if weights is None:
            raise DatafreeError(f"--teachers {ref}: give its weights as NAME:WEIGHTS (e.g. resnet32:resnet32.th)")
        members.append(_load_model(a, name=name, weights=weights, input_spec=spec, num_classes=spec.num_classes))
    return Ensemble(members).to(next(first.parameters()).device)


def cmd_quantize(a: argparse.Namespace) -> int:
    _check_out(a, "file")
    from ..data.real import load_dataset
    from ..evaluation.metrics import evaluate
    from ..compressors.quant import quantize
    from ..kd.sources import load_source

    cfg = _quant_config(a, seed=a.seed)
    model = _load_model(a)
    calib = load_source(a.calib, model, num=cfg.num_calib, seed=a.seed, data_root=a.data_root, progress=not a.no_progress)
    bn_data = load_source(a.bn_data, model, num=cfg.num_calib, seed=a.seed, data_root=a.data_root) if a.bn_data else None
    t0 = time.time()
    kd, val = None, None
    if a.finetune_epochs or a.finetune_steps:
        steps = _kd_steps(a.finetune_steps, a.finetune_epochs, len(calib), a.kd__batch_size)
        kd = _kd_config(a, steps, batch_size=min(a.kd__batch_size, len(calib)))
        val = load_dataset(a.val, model.input_spec, a.data_root) if a.val else None
    qm = quantize(model, calib, cfg, bn_data=bn_data, kd=kd, val=val, progress=not a.no_progress)
    seconds = round(time.time() - t0, 2)
    _save_artifact(qm, a.out, teacher=model, extra={"calib": a.calib, "seconds": seconds})
    info: dict[str, Any] = {"out": a.out, "calib": a.calib, "w_bits": cfg.w_bits, "a_bits": cfg.a_bits, "seconds": seconds}
    human = f"saved W{cfg.w_bits}A{cfg.a_bits} model calibrated on {a.calib} ({len(calib)} samples) to {a.out}"
    qi = getattr(qm, "quant_info", {})
    if "mixed" in qi:
        from ..compressors.quant.mixed import plan_table

        mx = qi["mixed"]
        info.update(avg_bits=round(mx["avg_bits"], 3), plan=[{k: e[k] for k in ("name", "w_bits", "a_bits")}
                                                             for e in qm.quant_plan])  # type: ignore[attr-defined]
        human = (f"saved mixed-precision model (weights {mx['avg_bits']:.2f} bits on average, activations "
                 f"{cfg.a_bits} bits) calibrated on {a.calib} ({len(calib)} samples) to {a.out}\n"
                 + plan_table(qm.quant_plan, mx["sensitivity"], mx["params"]))  # type: ignore[attr-defined]
    if "reconstruct" in qi:
        rec = qi["reconstruct"]
        info["reconstruct"] = rec
        human += (f"\n{cfg.reconstruct}: {len(rec)} blocks, output MSE {sum(r['mse_before'] for r in rec):.4g} -> "
                  f"{sum(r['mse_after'] for r in rec):.4g} (summed over blocks)")
    if a.eval:
        r = evaluate(qm, load_dataset(a.eval, model.input_spec, a.data_root), teacher=model)
        info.update(r)
        human += f"\n{a.eval}: top-1 {r['top1']:.2f}% (FP32 {r['teacher_top1']:.2f}%), agreement {r['agreement']:.2f}%"
    _emit(a, info, human)
    return 0


def cmd_evaluate(a: argparse.Namespace) -> int:
    from ..data.real import load_dataset
    from ..evaluation.metrics import evaluate

    teacher = None
    model = _load_model(a)
    src = getattr(model, "source", {})
    if a.teacher_weights:  # the FP32 model to report agreement with: the file's base model (or MODEL) at these weights
        from ..models import load_model

        ref = src.get("model_file") or src["model"]
        teacher = load_model(ref, a.teacher_weights, num_classes=src.get("num_classes"),
                             input_spec=model.input_spec if ".py:" in ref else None)  # type: ignore[attr-defined]
    import torch

    model = model.to(torch.device(a.device))
    data = load_dataset(a.data, model.input_spec, a.data_root)  # type: ignore[attr-defined]
    r = evaluate(model, data, teacher=teacher)
    r["model"] = a.model
    human = f"{a.model} on {a.data}: top-1 {r['top1']:.2f}% (n={r['n']}), size {r['size_bits'] / 8 / 1024:.1f} KiB"
    if "agreement" in r:
        human += f", agreement with FP32 {r['agreement']:.2f}%"
    _emit(a, r, human)
    return 0


def cmd_similarity(a: argparse.Namespace) -> int:
    from ..evaluation.metrics import similarity
    from ..kd.sources import load_source

    model = _load_model(a)
    data = load_source(a.data, model, num=a.num, seed=a.seed, data_root=a.data_root, progress=not a.no_progress)
    r = similarity(model, data)
    r["source"] = a.data
    worst = sorted(r["layers"].items(), key=lambda kv: -kv[1])[:3]
    human = (f"BN-statistics divergence of {a.data} (n={r['n']}) through {a.model}: {r['score']:.4f}\n"
             + "largest layers: " + ", ".join(f"{k} {v:.4f}" for k, v in worst))
    if a.per_batch:
        import statistics

        from ..evaluation.metrics import similarity_per_batch

        if a.per_batch < 2:
            raise DatafreeError(f"--per-batch must be >= 2 samples, got {a.per_batch}")
        scores = similarity_per_batch(model, data, a.per_batch, seed=a.seed, score=a.score)
        r["per_batch"] = {"batch_size": a.per_batch, "score": a.score, "scores": [round(v, 5) for v in scores]}
        human += (f"\n{a.score} score per batch of {a.per_batch} ({len(scores)} batches): median {statistics.median(scores):.4f}, "
                  f"min {min(scores):.4f}, max {max(scores):.4f} (a detector score: compare with batches of data you trust)")
    _emit(a, r, human)
    return 0


def cmd_export(a: argparse.Namespace) -> int:
    _check_out(a, "file")
    from ..compressors.quant.export import check_export, export_onnx, ort_quantize_static
    from ..compressors.quant.graph import act_quantizers, int8_activations_
    from ..compressors.quant.layers import quant_layers

    model = _load_model(a)
    quantized = bool(quant_layers(model))
    if a.opset < 13:
        raise DatafreeError(f"--opset {a.opset} is too old: per-channel QuantizeLinear/DequantizeLinear need opset >= 13")
    if a.calibrate_with == "onnxruntime":
        if a.int8_activations:
            raise DatafreeError("--int8-activations widens a datafree-quantized file's grids; onnxruntime's quantizer "
                                "is 8-bit already: drop one of the two options")
        if quantized:
            raise DatafreeError("--calibrate-with onnxruntime quantizes an FP32 model; give the FP32 model, not a "
                                "quantized file (or drop --calibrate-with to export the file's own numbers)")
        if not a.calib:
            raise DatafreeError("--calibrate-with onnxruntime needs --calib: a synthetic set, a method or a dataset spec")
        if a.num_calib < 1:
            raise DatafreeError(f"--num-calib must be >= 1, got {a.num_calib}")
        from ..kd.sources import load_source

        calib = load_source(a.calib, model, num=a.num_calib, seed=a.seed, data_root=a.data_root,
                            progress=not a.no_progress)
        import tempfile

        with tempfile.TemporaryDirectory() as d:
            fp32 = export_onnx(model, Path(d) / "fp32.onnx", opset=a.opset)
            path = ort_quantize_static(fp32, a.out, calib)
        kind = f"onnxruntime quantize_static (QDQ, per-channel int8) calibrated on {a.calib} ({len(calib)} samples)"
    else:
        original = model
        sub8 = sorted({m.a_bits for m in act_quantizers(model) if m.act_quant and m.a_bits < 8})
        if a.int8_activations:
            if not quantized:
                raise DatafreeError("--int8-activations applies to a quantized file (from `datafree quantize`), "
                                    "not an FP32 model")
            import copy

            model = copy.deepcopy(model)
            widened = int8_activations_(model)
        path = export_onnx(model, a.out, opset=a.opset)
        kind = "int8 QDQ graph with this file's own numbers" if quantized else "FP32 graph"
        if a.int8_activations:
            kind += (f"; {widened} activation grid(s) of {'/'.join(map(str, sub8))} bits widened to int8 within their "
                     f"clipped ranges" if widened else "; --int8-activations: every activation grid is already 8-bit")
        elif sub8:
            kind += (f" (activations at {'/'.join(map(str, sub8))} bits keep their b-bit clip as float ops: exact, but "
                     f"not int8 speed; --int8-activations ships them on the int8 grid of the same clipped ranges)")
    info: dict[str, Any] = {"out": str(path), "bytes": path.stat().st_size, "calibrate_with": a.calibrate_with}
    if a.int8_activations:
        info["int8_activations"] = widened
    human = f"wrote {path} ({path.stat().st_size / 1024:.1f} KiB): {kind}"
    if a.check:
        from ..data.real import load_dataset

        data = load_dataset(a.check, model.input_spec, a.data_root)  # type: ignore[attr-defined]
        for k in ("latency_batch", "ort_threads", "reps"):
            if getattr(a, k) < 1:
                raise DatafreeError(f"--{k.replace('_', '-')} must be >= 1, got {getattr(a, k)}")
        r = check_export(path, model, data, batch=a.latency_batch, threads=a.ort_threads, reps=a.reps)
        info.update(r)
        ref = "FP32 PyTorch model" if not quantized else "PyTorch simulation"
        if a.int8_activations and widened:  # (refused above together with --calibrate-with onnxruntime)
            from ..core.utils import top1

            ref = "widened PyTorch simulation"
            info["top1_sim_original"] = round(top1(original, data), 2)
            human += f"\n{a.check}: top-1 of the b-bit simulation (the file given) {info['top1_sim_original']:.2f}%"
        human += (f"\n{a.check}: top-1 {ref} {r['top1_sim']:.2f}%, onnxruntime {r['top1_ort']:.2f}%, "
                  f"same prediction on {r['prediction_agreement']:.2f}% of {r['n']} images")
        human += f"\nsize: {r['bytes'] / 1024:.1f} KiB vs FP32 export {r['bytes_fp32'] / 1024:.1f} KiB ({r['size_ratio']:.2f}x)"
        for v in r["latency"].values():
            human += (f"\nlatency batch {v['batch']}, {v['threads']} thread(s): {v['ms']:.3f} ms vs FP32 {v['fp32_ms']:.3f} ms "
                      f"({v['ratio']:.2f}x)")
        fused = ", ".join(f"{k} {n}" for k, n in r["integer_ops"].items()) or "none"
        left = ", ".join(f"{k} {n}" for k, n in r["float_ops"].items()) or "none"
        human += f"\nonnxruntime integer kernels: {fused}; float compute left: {left}"
    _emit(a, info, human)
    return 0


def _save_artifact(model: Any, out: str, **kw: Any) -> Path:
    """save_artifact on rank 0 (the only process without torchrun); the other ranks wait until the file exists."""
    from ..compressors.artifact import save_artifact

    path = save_artifact(model, out, **kw) if parallel.is_main() else Path(out)
    parallel.barrier()
    return path


def _kd_steps(steps: int, epochs: int, n: int, batch_size: int) -> int:
    """Explicit steps, else passes over n samples at this batch size."""
    return steps or epochs * max(1, n // batch_size)


def _write_curve(curve: list[dict], out: str, title: str) -> str:
    """Validation curve beside the output: OUT.curve.json and OUT.curve.png (top-1 against wall-clock seconds)."""
    from ..evaluation.metrics import plot_curves
    from ..core.utils import atomic_write

    stem = str(Path(out).with_suffix(""))
    if not parallel.is_main():
        return stem + ".curve.png"
    atomic_write(stem + ".curve.json", lambda f: f.write(json.dumps({"title": title, "points": curve}, indent=1).encode()))
    pts = [(c.get("seconds", c["step"]), c["val_top1"]) for c in curve]
    plot_curves({"student": pts}, stem + ".curve.png", xlabel="seconds" if "seconds" in curve[0] else "step", title=title)
    return stem + ".curve.png"


def _kd_data(a: argparse.Namespace, teacher: Any) -> tuple[Any, int, int, str]:
    """The KD loop's data from --method (rounds or a generator, the student in the loop) or --data (fixed): returns
    (source, KD steps, steps between checkpoints, its name)."""
    from ..kd.sources import RoundsConfig, load_source, stream_source

    if (a.method is None) == (a.data is None):
        raise DatafreeError("give --method (synthesize in rounds with the student in the loop) or --data "
                            "(a fixed synthetic set or dataset spec), exactly one")
    every = a.checkpoint_every
    if a.method is not None:
        rounds = _configured({"rounds": "--rounds", "per_round": "--per-round", "steps_per_round": "--steps-per-round"},
                             lambda: RoundsConfig(rounds=a.rounds, per_round=a.per_round, steps_per_round=a.steps_per_round))
        scfg = _synth_config(a, a.method, seed=a.seed, batch_size=a.per_round)
        data: Any = stream_source(a.method, scfg, rounds, seed=a.seed * 7919, progress=not a.no_progress)
        steps = a.steps or rounds.total_steps
        every = min(every, max(1, a.steps_per_round))
        source = a.method
    else:
        given = [a._synth_flags[n] for n in a._synth_flags if getattr(a, "synth__" + n) is not None]
        if given:
            raise DatafreeError(f"{', '.join(given)} set synthesis in rounds and do nothing with --data; drop them or use --method")
        data = load_source(a.data, teacher, num=a.num, seed=a.seed, data_root=a.data_root, progress=not a.no_progress)
        steps = _kd_steps(a.steps, a.epochs, len(data), a.kd__batch_size)
        source = a.data
    return data, steps, every, source


def cmd_distill(a: argparse.Namespace) -> int:
    _check_out(a, "file")
    from ..data.real import load_dataset
    from ..evaluation.metrics import evaluate
    from ..models import input_spec_of
    from ..compressors.student import distill_student_, record_distill

    teacher = _load_model(a)
    spec = input_spec_of(teacher)
    data, steps, every, source = _kd_data(a, teacher)
    import torch

    torch.manual_seed(a.seed)  # a student from scratch starts from the same weights for the same --seed
    student = _load_model(a, name=a.student, weights=a.student_weights, input_spec=spec,
                          num_classes=spec.num_classes)
    val = load_dataset(a.val, spec, a.data_root) if a.val else None
    ckpt = a.checkpoint_dir or a.out + ".ckpt"
    kd = _kd_config(a, steps)
    if kd.freeze_bn and not a.student_weights and parallel.is_main():
        print("note: --freeze-bn keeps a new student's BN statistics at their initial 0/1, so it trains without "
              "normalization and usually fails; use it with --student-weights (a pretrained student)", file=sys.stderr)
    if a.time_limit is not None and not a.time_limit > 0:
        raise DatafreeError(f"--time-limit must be a positive number of seconds, got {a.time_limit}")
    r = distill_student_(student, teacher, kd, data, checkpoint_dir=ckpt, val=val, progress=not a.no_progress,
                         overwrite=a.overwrite, checkpoint_every=every, time_limit=a.time_limit)
    curve = r.pop("curve")
    record_distill(student, teacher, kd, data=source)
    _save_artifact(student, a.out, teacher=teacher, extra={"summary": {k: v for k, v in r.items() if v is not None}})
    info: dict[str, Any] = {"out": a.out, "student": a.student, "method": source, **r}
    if curve:
        info["curve"] = _write_curve(curve, a.out, f"{a.student} from {source}, validated on {a.val}")
    human = (f"saved student {a.student} distilled from {source} ({r['samples']} samples, {r['steps']} steps, "
             f"{r['seconds']:.0f} s) to {a.out}; evaluate it with `datafree evaluate {a.out} --data ...`")
    if a.eval:
        ev = evaluate(student, load_dataset(a.eval, spec, a.data_root), teacher=teacher)
        info.update(top1=ev["top1"], teacher_top1=ev["teacher_top1"], n=ev["n"])
        human += f"\n{a.eval}: student top-1 {ev['top1']:.2f}% (teacher {ev['teacher_top1']:.2f}%)"
    _emit(a, info, human)
    return 0


def cmd_hash(a: argparse.Namespace) -> int:
    _check_out(a, "file")
    _check_out(a, "file", attr="materialize")
    from ..data.real import load_dataset
    from ..compressors.hashing import hash_distill, materialize
    from ..evaluation.metrics import evaluate
    from ..models import input_spec_of
    from ..core.utils import save_atomic

    cfg = _hash_config(a, seed=a.seed)
    teacher = _load_model(a)
    spec = input_spec_of(teacher)
    data, steps, every, source = _kd_data(a, teacher)
    kd = _kd_config(a, steps)
    val = load_dataset(a.val, spec, a.data_root) if a.val else None
    t0 = time.time()
    student = hash_distill(teacher, data, cfg, kd, checkpoint_dir=a.checkpoint_dir or a.out + ".ckpt", val=val,
                           progress=not a.no_progress, overwrite=a.overwrite, checkpoint_every=every,
                           time_limit=a.time_limit)
    hi = student.hash_info  # type: ignore[attr-defined]
    path = _save_artifact(student, a.out, teacher=teacher, extra={"data": source, "hash": hi})
    info: dict[str, Any] = {"out": a.out, "data": source, "steps": steps, "seconds": round(time.time() - t0, 2),
                            "variables": hi["variables"], "teacher_variables": hi["teacher_variables"],
                            "fraction": round(hi["variables"] / hi["teacher_variables"], 4), "n": hi["n"], "M": hi["M"],
                            "bytes": Path(path).stat().st_size}
    human = (f"hashed {hi['teacher_variables']} variables into {hi['variables']} ({info['fraction']:.1%}: X {hi['n']}x{hi['M']}, "
             f"Y {hi['M']}x{hi['n']}, per-tensor scales, BN), trained {steps} KD steps on {source}; saved to {a.out} "
             f"({info['bytes'] / 1024:.0f} KiB)")
    if a.materialize:
        plain = materialize(student)
        if parallel.is_main():
            save_atomic({k: v.detach().cpu() for k, v in plain.state_dict().items()}, a.materialize)
        info["materialized"] = a.materialize
        human += f"; plain state dict in {a.materialize}"
    curve = getattr(student, "kd_curve", None)
    if curve:
        info["curve"] = _write_curve(curve, a.out, f"hashed {a.model} ({info['fraction']:.0%}) from {source}, validated on {a.val}")
    if a.eval:
        ev = evaluate(student, load_dataset(a.eval, spec, a.data_root), teacher=teacher)
        info.update(top1=ev["top1"], teacher_top1=ev["teacher_top1"], n=ev["n"])
        human += f"\n{a.eval}: hashed top-1 {ev['top1']:.2f}% (original {ev['teacher_top1']:.2f}%)"
    _emit(a, info, human)
    return 0


def cmd_audit(a: argparse.Namespace) -> int:
    from ..evaluation.audit import audit, summary_line
    from ..data.real import load_dataset
    from ..data.synthetic import SyntheticSet
    from ..core.utils import atomic_write

    if a.out:
        _check_out(a, "dir", inputs=("set",))
    syn = SyntheticSet(a.set)
    if a.model:
        model = _load_model(a)
    else:
        src = syn.manifest.get("teacher") or {}
        if not (isinstance(src, dict) and src.get("model") and src.get("weights") and os.path.isfile(str(src["weights"]))):
            raise DatafreeError(f"{a.set} does not name a teacher whose weights are here; give it: --model NAME --weights FILE")
        a.model, a.weights = src["model"], src["weights"]
        model = _load_model(a)
    spec = model.input_spec  # type: ignore[attr-defined]
    train = load_dataset(a.real, spec, a.data_root).subset(a.num_real, a.seed)
    held = load_dataset(a.held_out, spec, a.data_root).subset(a.num_real, a.seed)
    data = syn.data.subset(a.num, a.seed) if a.num else syn.data
    png = str(Path(a.out) / "closest_pairs.png") if a.out else None
    if a.out:
        Path(a.out).mkdir(parents=True, exist_ok=True)
    r = audit(model, data, train, held, pairs_png=png)
    r.update(set=a.set, method=syn.manifest.get("method"), real=a.real, held_out=a.held_out)
    human = f"{a.set} ({r['method']}, {len(data)} samples) against {a.real} ({len(train)}) and {a.held_out} ({len(held)}): " \
            + summary_line(r)
    if a.out:
        js = json.dumps(r, indent=1).encode()
        atomic_write(Path(a.out) / "audit.json", lambda f: f.write(js))
        human += f"\nwrote {a.out}/audit.json and {png} (closest synthetic/real pairs, left to right)"
    _emit(a, r, human)
    return 0


def cmd_prune(a: argparse.Namespace) -> int:
    _check_out(a, "file")
    import copy

    from ..data.real import load_dataset
    from ..evaluation.metrics import evaluate
    from ..compressors.prune import PruneConfig, count_flops_params, finish_pruning_, prune_
    from ..kd.sources import load_source
    from ..compressors.student import distill_student_

    teacher = _load_model(a)
    before = count_flops_params(teacher)
    student = copy.deepcopy(teacher)
    t0 = time.time()
    pcfg = PruneConfig(sparsity=a.sparsity, structured=bool(a.structured))
    cut = prune_(student, pcfg)
    if a.structured:
        what = f"structured: {len(cut)} convs lose {a.sparsity:.0%} of their output channels"
    else:
        what = f"unstructured: {a.sparsity:.0%} of conv/linear weights zeroed"
    steps = 0
    r: dict[str, Any] = {}
    if a.finetune_epochs or a.finetune_steps:
        if not a.data:
            raise DatafreeError("fine-tuning needs --data SOURCE (synthetic-set directory, method or dataset spec)")
        data = load_source(a.data, teacher, num=a.num, seed=a.seed, data_root=a.data_root, progress=not a.no_progress)
        steps = _kd_steps(a.finetune_steps, a.finetune_epochs, len(data), a.kd__batch_size)
        kd = _kd_config(a, steps)
        val = load_dataset(a.val, teacher.input_spec, a.data_root) if a.val else None  # type: ignore[attr-defined]
        r = distill_student_(student, teacher, kd, data, checkpoint_dir=a.checkpoint_dir or a.out + ".ckpt",
                             val=val, progress=not a.no_progress, overwrite=a.overwrite)
    finish_pruning_(student, pcfg, cut)
    after = count_flops_params(student)
    _save_artifact(student, a.out, teacher=teacher, extra={"data": a.data, "steps": steps})
    info: dict[str, Any] = {"out": a.out, "mode": "structured" if a.structured else "unstructured", "sparsity": a.sparsity,
                            "data": a.data, "steps": steps, "seconds": round(time.time() - t0, 2),
                            "flops_before": before["flops"], "flops_after": after["flops"],
                            "params_before": before["params"], "params_after": after["params"],
                            "nonzero_params_after": after["nonzero_params"]}
    if r:
        info.update(final_kd_loss=r["final_loss"], val_top1=r["val_top1"])
    human = (f"{what}; FLOPs {before['flops'] / 1e6:.1f}M -> {after['flops'] / 1e6:.1f}M "
             f"({100 * (1 - after['flops'] / before['flops']):.1f}% removed), params {before['params'] / 1e3:.1f}k -> "
             f"{after['nonzero_params'] / 1e3:.1f}k nonzero; fine-tuned {steps} steps on {a.data or '-'}; saved to {a.out} "
             f"(evaluate it with `datafree evaluate {a.out} --data ...`)")
    if not a.structured:
        human += "\nnote: unstructured zeros shrink the model only in sparse storage; FLOPs are counted dense"
    if a.eval:
        ev = evaluate(student, load_dataset(a.eval, teacher.input_spec, a.data_root), teacher=teacher)  # type: ignore[attr-defined]
        info.update(top1=ev["top1"], teacher_top1=ev["teacher_top1"], n=ev["n"])
        human += f"\n{a.eval}: pruned top-1 {ev['top1']:.2f}% (unpruned {ev['teacher_top1']:.2f}%)"
    _emit(a, info, human)
    return 0


def _class_list(s: str) -> list[int]:
    try:
        out: list[int] = []
        for part in s.split(","):
            lo, _, hi = part.partition("-")
            a, b = int(lo), int(hi or lo)
            if a < 0 or b < a:
                raise ValueError
            out.extend(range(a, b + 1))
        return out
    except ValueError:
        raise DatafreeError(f"classes must look like 5-9 or 5,6,7, got {s!r}") from None


def cmd_extend(a: argparse.Namespace) -> int:
    _check_out(a, "file")
    from ..compressors.continual import ContinualConfig, extend_classes, split_accuracy
    from ..data.real import load_dataset
    from ..models import input_spec_of
    from ..kd.sources import load_source

    old = _load_model(a)
    spec = input_spec_of(old)
    classes = _class_list(a.new_classes)
    if min(classes) < spec.num_classes:
        raise DatafreeError(f"--new-classes must start at {spec.num_classes} or above: the old model already has "
                            f"classes 0-{spec.num_classes - 1} (set its size with --num-classes)")
    total = max(classes) + 1
    new = load_dataset(a.new_data, spec, a.data_root).only_classes(classes).subset(a.num_new, a.seed)
    if len(new) == 0:
        raise DatafreeError(f"{a.new_data} has no images of classes {a.new_classes}")
    inverted = None
    if a.method == "deepinversion":
        inverted = load_source(a.inverted, old, num=a.num_inverted, seed=a.seed, data_root=a.data_root,
                               progress=not a.no_progress)
    t0 = time.time()
    kd = _kd_config(a, a.steps)
    ccfg = _configured({"kd_weight": "--kd-weight"}, lambda: ContinualConfig(method=a.method, kd_weight=a.kd_weight,
                                                                             temperature=kd.temperature))
    model = extend_classes(old, new, total, ccfg, kd=kd, synthetic=inverted, progress=not a.no_progress)
    _save_artifact(model, a.out, teacher=old)
    info: dict[str, Any] = {"out": a.out, "method": a.method, "num_classes": total, "new_samples": len(new),
                            "inverted_samples": 0 if inverted is None else len(inverted), "seconds": round(time.time() - t0, 2)}
    human = (f"saved a {total}-class model ({a.method}, {len(new)} new-class images"
             + (f", {len(inverted)} inverted old-class samples" if inverted is not None else "")
             + f") to {a.out}; evaluate it with `datafree evaluate {a.out} --data ...`")
    if a.eval:
        test = load_dataset(a.eval, input_spec_of(model), a.data_root).only_classes(range(total))
        info.update(split_accuracy(model, test, spec.num_classes))
        human += (f"\n{a.eval}: top-1 old classes {info['top1_old']:.2f}%, new {info['top1_new']:.2f}%, "
                  f"all {info['top1_all']:.2f}%")
    _emit(a, info, human)
    return 0


def cmd_demo(a: argparse.Namespace) -> int:
    from ..demo import run_demo

    run_demo(out=a.out, progress=not a.no_progress)
    return 0


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows an option's default only when it says something (not None/False, not already in the help text)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        h = action.help or ""
        if (action.default is None or action.default is False or action.default == argparse.SUPPRESS or "default" in h
                or isinstance(action, argparse._StoreFalseAction)):
            return h
        return super()._get_help_string(action)


def _kd_data_options(s: argparse.ArgumentParser, specs: str, preset: str = "student") -> None:
    """Where a KD loop gets its data (--method stream or --data), its length, checkpoints and validation."""
    from ..synth import SYNTHESIZERS

    s.add_argument("--method", choices=SYNTHESIZERS.names(), help="synthesis method as a stream: pixel methods and "
                   "cmi/fast synthesize in rounds into a growing pool; dafl/rdskd train a generator first, then every "
                   "batch is fresh")
    s.add_argument("--data", metavar="SOURCE", help=f"fixed data instead: synthetic-set directory or dataset spec ({specs})")
    s.add_argument("--num", type=int, help="with --data: use at most this many samples")
    s.add_argument("--rounds", type=int, default=4, help="with --method: synthesize-then-distill rounds")
    s.add_argument("--per-round", type=int, default=256, help="with --method: samples synthesized per round (generator "
                   "methods: the generator batch)")
    s.add_argument("--steps-per-round", type=int, default=200, help="with --method: KD steps after each round")
    _synth_options(s, ["iterations", "lr", "bf16", "bn_weight", "latent_dim", "width", "adv", "joint"], flags={"lr": "--synth-lr"},
                   help_extra=" (with --method)")
    s.add_argument("--steps", type=int, default=0, help="KD steps (with --data: overrides --epochs; with --method: "
                   "overrides rounds x steps-per-round)")
    s.add_argument("--epochs", type=int, default=20, help="with --data: passes over the data")
    _kd_options(s, preset, ["lr", "optimizer", "weight_decay", "temperature", "batch_size", "freeze_bn", "augment",
                            "mixup", "val_every", "bf16", "channels_last"])
    s.add_argument("--val", metavar="DATASET_SPEC", help="real data for validation accuracy in the progress log; the "
                   "curve goes to OUT.curve.json and OUT.curve.png")
    s.add_argument("--checkpoint-dir", help="where checkpoints and the sample pool go (default: OUT.ckpt)")
    s.add_argument("--checkpoint-every", type=int, default=200, help="with --data: steps between checkpoints")
    s.add_argument("--time-limit", type=float, metavar="SECONDS", help="stop after this many seconds of the run "
                   "(resumed pieces included) even if steps remain; the learning-rate schedule still spans all steps, "
                   "so plan --steps to fit")
    s.add_argument("--overwrite", action="store_true", help="discard an existing checkpoint instead of resuming")
    s.add_argument("--seed", type=int, default=0, help="random seed")


def build_parser() -> argparse.ArgumentParser:
    from .._version import __version__
    from ..data.real import DATASET_SPECS
    from ..synth import SYNTHESIZERS

    fmt = _HelpFormatter
    p = argparse.ArgumentParser(prog="datafree", formatter_class=fmt,
                                description="Compress a trained image classifier without its training data: "
                                            "synthesize samples from the model; quantize, distill, prune or extend it with them; evaluate on real data.")
    p.add_argument("--version", action="version", version=f"datafree {__version__}")
    sub = p.add_subparsers(dest="cmd", metavar="COMMAND")
    sub.required = True
    specs = ", ".join(DATASET_SPECS)

    s = sub.add_parser("list", help="list zoo models, synthesis methods and dataset specs", formatter_class=fmt)
    s.set_defaults(func=cmd_list)

    s = sub.add_parser("synthesize", formatter_class=fmt, help="make synthetic samples from a trained model",
                       description="Make synthetic samples from a trained model and store them as a SyntheticSet "
                                   "directory (float shards, labels, teacher logits, manifest.json, grid.png). "
                                   "An interrupted run resumes when the same command is repeated.")
    _model_args(s)
    s.add_argument("--method", required=True, choices=SYNTHESIZERS.names(), help="synthesis method")
    s.add_argument("--out", required=True, help="output directory")
    s.add_argument("--teachers", nargs="+", metavar="NAME:WEIGHTS",
                   help="more teachers with MODEL's input spec (zoo name or file.py:factory, colon, weights; or one .txt "
                        "file listing them): the set is synthesized from the pool at once (mixmix's feature mixing; any "
                        "BN method works on the pool)")
    _synth_options(s)
    s.add_argument("--overwrite", action="store_true", help="replace an existing set in --out")
    s.add_argument("--json", action="store_true", help="print a JSON summary")
    _common(s)
    s.set_defaults(func=cmd_synthesize)

    s = sub.add_parser("quantize", formatter_class=fmt, help="post-training quantization calibrated on any data source",
                       description="Fold BN, quantize weights per output channel (MSE-optimal clipping) and inputs of "
                                   "every conv/linear per tensor, calibrated on SOURCE; save one file that "
                                   "`datafree evaluate` loads. First and last layer stay at 8 bits unless "
                                   "--quantize-first-last.")
    _model_args(s)
    s.add_argument("--calib", required=True, metavar="SOURCE",
                   help=f"SyntheticSet directory, a method ({', '.join(SYNTHESIZERS.names())}) run on the fly, or a dataset spec ({specs})")
    _quant_options(s)
    s.add_argument("--bn-data", metavar="SOURCE", help="data for BN re-estimation (default: --calib)")
    s.add_argument("--finetune-epochs", type=int, default=0,
                   help="quantization-aware KD fine-tuning: passes over the calibration data (0 = calibration only)")
    s.add_argument("--finetune-steps", type=int, default=0, help="fine-tuning steps (overrides --finetune-epochs)")
    _kd_options(s, "qat", ["lr", "temperature", "batch_size", "augment", "val_every"])
    s.add_argument("--val", metavar="DATASET_SPEC", help="real data to show validation accuracy during fine-tuning")
    s.add_argument("--seed", type=int, default=0, help="seed for sample selection and on-the-fly synthesis")
    s.add_argument("--out", required=True, help="output file (.pt)")
    s.add_argument("--eval", metavar="DATASET_SPEC", help="also evaluate on this real dataset")
    s.add_argument("--json", action="store_true", help="print one JSON object")
    _common(s)
    s.set_defaults(func=cmd_quantize)

    s = sub.add_parser("evaluate", formatter_class=fmt, help="top-1 of a model or quantized file on real data",
                       description="Top-1 accuracy on a real dataset, model size in bits and, with --teacher-weights, "
                                   "agreement of a quantized model with its FP32 teacher.")
    _model_args(s, "model", help_extra=", or a file written by `datafree quantize/prune/distill/extend`")
    s.add_argument("--data", required=True, metavar="DATASET_SPEC", help=f"one of: {specs}")
    s.add_argument("--teacher-weights", help="for a quantized file: FP32 weights, to report agreement")
    s.add_argument("--json", action="store_true", help="print one JSON object (keys: top1 in percent, n, size_bits, ...)")
    _common(s)
    s.set_defaults(func=cmd_evaluate)

    s = sub.add_parser("similarity", formatter_class=fmt, help="BN-statistics divergence of a data source through a model",
                       description="How far a data source's per-channel statistics at every BN layer's input are from "
                                   "the model's stored running statistics (KL of Gaussians, channel-averaged, summed "
                                   "over layers). Low means 'looks like the training data'.")
    _model_args(s)
    s.add_argument("--data", required=True, metavar="SOURCE", help="synthetic-set directory, method name or dataset spec")
    s.add_argument("--num", type=int, help="use at most this many samples (default: all; 512 for on-the-fly methods)")
    s.add_argument("--seed", type=int, default=0, help="seed for the subset and on-the-fly synthesis")
    s.add_argument("--per-batch", type=int, metavar="B", help="also score every batch of B samples (a detector of "
                   "inputs unlike the training data: BENCHMARKS.md has its AUROC against shifted data)")
    s.add_argument("--score", choices=["bn", "bn+oh"], default="bn+oh", help="per-batch score: bn = the BN-statistics "
                   "divergence alone; bn+oh adds the batch-mean −log max softmax (the model expects confident outputs "
                   "on its training data; on inverted CIFAR-10 colours AUROC 0.999 vs 0.989 at batch 64, BENCHMARKS.md)")
    s.add_argument("--json", action="store_true", help="print one JSON object with `score` and per-layer `layers`")
    _common(s)
    s.set_defaults(func=cmd_similarity)

    s = sub.add_parser("export", formatter_class=fmt, help="export a quantized file (or a model) to ONNX",
                       description="Write an ONNX file: a quantized model becomes a QuantizeLinear/DequantizeLinear "
                                   "graph with int8 weights that onnxruntime runs; a plain model is exported in FP32. "
                                   "Needs onnx and onnxruntime (pip install 'datafree[export]').")
    _model_args(s, "model", help_extra=", or a file written by `datafree quantize/prune/distill/extend`")
    s.add_argument("--out", required=True, help="output .onnx file")
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
    s.add_argument("--seed", type=int, default=0, help="seed for the calibration subset")
    s.add_argument("--int8-activations", action="store_true",
                   help="for sub-8-bit files (W4A4, W3A3): ship activations on the int8 grid spanning each calibrated "
                        "clipped range, weights kept on their b-bit grid, so onnxruntime runs every convolution on "
                        "integer kernels (int8 speed; the b-bit activation clip otherwise stays a float op). The file "
                        "then differs from the b-bit simulation: --check compares it with the widened simulation and "
                        "also reports the b-bit one")
    s.add_argument("--json", action="store_true", help="print one JSON object")
    _common(s)
    s.set_defaults(func=cmd_export)

    s = sub.add_parser("distill", formatter_class=fmt, help="train a student from the teacher without its data",
                       description="Data-free knowledge distillation: train STUDENT (zoo name or file.py:factory, from "
                                   "scratch or --student-weights) to match TEACHER's logits (KL at a temperature) on "
                                   "synthetic samples. With --method, run rounds: synthesize --per-round samples with "
                                   "the current student in the loop (adaptive-deepinversion needs this), add them to a "
                                   "pool, distill --steps-per-round steps. With --data, distill on a fixed synthetic "
                                   "set or dataset spec. Checkpoints go to --checkpoint-dir after every round (or "
                                   "--checkpoint-every steps); re-running the same command resumes. The output is a "
                                   "state dict that `datafree evaluate STUDENT --weights OUT` loads.")
    _model_args(s, "teacher")
    s.add_argument("--student", required=True, help="student: zoo model name or path/to/file.py:factory")
    s.add_argument("--student-weights", help="start the student from these weights (default: from scratch)")
    _kd_data_options(s, specs)
    s.add_argument("--out", required=True, help="output state dict (.pt)")
    s.add_argument("--eval", metavar="DATASET_SPEC", help="evaluate the student (and teacher) on this real dataset")
    s.add_argument("--json", action="store_true", help="print one JSON object")
    _common(s)
    s.set_defaults(func=cmd_distill)

    s = sub.add_parser("hash", formatter_class=fmt, help="shrink a model's variables to a budget (Structured Multi-"
                       "Hashing), trained by KD", description="Structured Multi-Hashing (Eban et al. 2020): every conv/"
                       "linear weight and bias of MODEL is read from one virtual n x n matrix X·Y (2·M·n variables, M "
                       "from the budget) times a learnable per-tensor scale; BN stays as it is. The hashed copy learns "
                       "MODEL's logits by KD on --method (a generator or rounds, the student in the loop) or --data (a "
                       "fixed synthetic set or dataset spec). The file stores X, Y, scales and BN, so its size follows "
                       "the budget; `datafree evaluate/export FILE` read it, --materialize writes a plain state dict.")
    _model_args(s)
    _hash_options(s)
    _kd_data_options(s, specs, preset="hash")
    s.add_argument("--out", required=True, help="output file (.pt) with X, Y, scales and BN")
    s.add_argument("--materialize", metavar="FILE", help="also write a plain state dict of the model's architecture "
                   "(every weight materialized) for deployment: `datafree evaluate MODEL --weights FILE` loads it")
    s.add_argument("--eval", metavar="DATASET_SPEC", help="evaluate the hashed model (and MODEL) on this real dataset")
    s.add_argument("--json", action="store_true", help="print one JSON object")
    _common(s)
    s.set_defaults(func=cmd_hash)

    s = sub.add_parser("audit", formatter_class=fmt, help="privacy audit: how close synthetic samples come to real "
                       "training images", description="For every sample of SET: its nearest image of --real (the "
                       "teacher's training data or a proxy) in pixel space and in the teacher's feature space (the "
                       "classifier head's input), against how close --held-out real images the teacher never saw come "
                       "to --real; the share of samples nearer to --real than to an equal-size --held-out set (0.5 = no "
                       "sign of leaking) with its p-value against random re-splits of those real images (small = "
                       "leak); the closest pairs as a PNG; and a membership-inference score of the teacher "
                       "itself (AUROC of its confidence on --real vs --held-out; 0.5 = members cannot be told apart). "
                       "The teacher is the one named in SET's manifest unless --model is given.")
    s.add_argument("set", metavar="SET", help="synthetic-set directory")
    s.add_argument("--real", required=True, metavar="DATASET_SPEC", help="training images (or a proxy), e.g. cifar10:train-exact")
    s.add_argument("--held-out", required=True, metavar="DATASET_SPEC", help="real images the teacher never saw, e.g. "
                   "cifar10:test-exact")
    s.add_argument("--model", help="teacher (zoo name or file.py:factory; default: SET's manifest)")
    s.add_argument("--weights", help="teacher weights")
    s.add_argument("--num-classes", type=int, help=argparse.SUPPRESS)
    s.add_argument("--input-shape", help=argparse.SUPPRESS)
    s.add_argument("--mean", help=argparse.SUPPRESS)
    s.add_argument("--std", help=argparse.SUPPRESS)
    s.add_argument("--model-file", help=argparse.SUPPRESS)
    s.add_argument("--num", type=int, help="audit at most this many synthetic samples")
    s.add_argument("--num-real", type=int, help="use at most this many images of --real and of --held-out")
    s.add_argument("--seed", type=int, default=0, help="seed of the subsets")
    s.add_argument("--out", help="directory for audit.json and closest_pairs.png")
    s.add_argument("--json", action="store_true", help="print one JSON object")
    _common(s)
    s.set_defaults(func=cmd_audit)

    s = sub.add_parser("prune", formatter_class=fmt, help="prune a model and recover accuracy by KD on synthetic data",
                       description="Prune MODEL, then fine-tune it by distillation from the unpruned model on --data "
                                   "(synthetic set, method or dataset spec). --structured removes output channels of "
                                   "every conv whose channels feed only one other conv (the inner convs of residual "
                                   "blocks), lowest BN-folded L1 norm first, so FLOPs really drop; --unstructured "
                                   "zeroes the smallest weights globally. Prints FLOPs and parameters before and after.")
    _model_args(s)
    s.add_argument("--sparsity", type=float, required=True,
                   help="fraction of channels (structured) or of weights (unstructured) to remove, in [0, 1)")
    g = s.add_mutually_exclusive_group(required=True)
    g.add_argument("--structured", action="store_true", help="remove whole channels (real FLOP savings)")
    g.add_argument("--unstructured", action="store_true", help="zero individual weights (global magnitude)")
    s.add_argument("--data", metavar="SOURCE", help="fine-tuning data: synthetic-set directory, method or dataset spec")
    s.add_argument("--num", type=int, help="use at most this many samples of --data")
    s.add_argument("--finetune-epochs", type=int, default=0, help="passes over --data (0 = no fine-tuning)")
    s.add_argument("--finetune-steps", type=int, default=0, help="fine-tuning steps (overrides --finetune-epochs)")
    _kd_options(s, "prune", ["lr", "temperature", "batch_size", "freeze_bn", "augment", "val_every"])
    s.add_argument("--val", metavar="DATASET_SPEC", help="real data for validation accuracy in the progress bar")
    s.add_argument("--checkpoint-dir", help="fine-tuning checkpoints (default: OUT.ckpt); re-running resumes")
    s.add_argument("--overwrite", action="store_true", help="discard an existing checkpoint instead of resuming")
    s.add_argument("--seed", type=int, default=0, help="random seed")
    s.add_argument("--out", required=True, help="output state dict (.pt)")
    s.add_argument("--eval", metavar="DATASET_SPEC", help="evaluate pruned and unpruned model on this real dataset")
    s.add_argument("--json", action="store_true", help="print one JSON object")
    _common(s)
    s.set_defaults(func=cmd_prune)

    s = sub.add_parser("extend", formatter_class=fmt, help="add classes to a classifier without the old classes' data",
                       description="Data-free continual learning: grow MODEL's linear head to the new classes and train "
                                   "on real images of the new classes only. --method deepinversion also trains on "
                                   "inverted samples of the old classes (labelled by the old model) and distills the "
                                   "old model's outputs on them; lwf distills the old outputs on the new images only; "
                                   "finetune-new does neither (it forgets). Give the old model's class count with "
                                   "--num-classes.")
    _model_args(s)
    s.add_argument("--new-data", required=True, metavar="DATASET_SPEC", help="real data holding the new classes")
    s.add_argument("--new-classes", required=True, help="labels of the new classes, e.g. 5-9")
    s.add_argument("--num-new", type=int, help="use at most this many new-class images")
    s.add_argument("--method", choices=["finetune-new", "lwf", "deepinversion"], default="deepinversion",
                   help="how the old classes are kept")
    s.add_argument("--inverted", default="deepinversion", metavar="SOURCE",
                   help="old-class samples for --method deepinversion: synthetic-set directory or method run on the fly")
    s.add_argument("--num-inverted", type=int, default=1024, help="old-class samples to use or synthesize")
    s.add_argument("--steps", type=int, default=1000, help="training steps")
    s.add_argument("--kd-weight", type=float, default=1.0, help="weight of the old-head distillation term")
    _kd_options(s, "continual", ["lr", "temperature", "batch_size", "augment", "flip"])
    s.add_argument("--seed", type=int, default=0, help="random seed")
    s.add_argument("--out", required=True, help="output state dict (.pt)")
    s.add_argument("--eval", metavar="DATASET_SPEC", help="report old / new / all-class top-1 on this real dataset")
    s.add_argument("--json", action="store_true", help="print one JSON object")
    _common(s)
    s.set_defaults(func=cmd_extend)

    s = sub.add_parser("demo", formatter_class=fmt, help="the point in 3 minutes: which samples can compress a model, on scikit-learn digits",
                       description="Train (and cache) a small BN-CNN on scikit-learn digits; quantize it to 2-bit weights "
                                   "and 4-bit activations calibrated on real digits / gaussian / inception / bn-stats "
                                   "samples, fine-tune each by KD on the same samples, and print the table (plot: "
                                   "OUT/demo_results.png); then export a W8A8 int8 ONNX file and time it against FP32. "
                                   "Needs no data files.")
    s.add_argument("--out", default="demo_out", help="output folder for the cached model and grids")
    _common(s)
    s.set_defaults(func=cmd_demo)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point; user errors are one line on stderr and a non-zero exit."""
    import warnings

    # torch's note about the pickle protocol of a file it then refuses would be two more lines around our one-line error
    warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--"]:  # `torchrun ... --no-python datafree -- SUBCOMMAND`: the separator reaches us
        argv = argv[1:]
    a = parser.parse_args(argv)
    debug = bool(os.environ.get("DATAFREE_DEBUG"))
    ok = False
    try:
        if hasattr(a, "device"):
            _setup(a)
        code = a.func(a)
        ok = code == 0
        return code
    except DatafreeError as e:
        print(f"datafree: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("datafree: interrupted; finished work is kept (synthesis resumes when the same command is re-run)", file=sys.stderr)
        return 130
    except OSError as e:  # disk full, permissions, a path that is not what it should be
        if debug:
            raise
        where = f" {e.filename}" if getattr(e, "filename", None) else ""
        print(f"datafree: error: cannot read or write{where}: {e.strerror or e} (free space or choose another path; "
              "finished shards and checkpoints are kept)", file=sys.stderr)
        return 1
    except Exception as e:  # not anticipated: say so, instead of guessing at the user's input
        if debug:
            raise
        stage = f"running `datafree {a.cmd}`" if getattr(a, "cmd", None) else "starting"
        print(f"datafree: internal error while {stage}: {type(e).__name__}: {first_line(e, 300)}; please report it, "
              "DATAFREE_DEBUG=1 shows the traceback", file=sys.stderr)
        return EXIT_INTERNAL
    finally:
        parallel.shutdown(ok)


if __name__ == "__main__":
    sys.exit(main())
