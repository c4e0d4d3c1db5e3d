"""`datafree list`, `evaluate`, `similarity`, `audit` and `demo`: look at models, data and samples."""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from ..core.errors import DatafreeError
from ..models import input_spec_of
from ..models.record import record_of
from .common import (
    FILE_HELP,
    Context,
    check_out,
    command,
    dataset,
    emit,
    load_model,
    model_args,
    output_args,
    run_args,
    source,
)


def cmd_list(a: argparse.Namespace) -> int:
    from ..compressors import COMPRESSORS
    from ..data.real import DATASET_SPECS
    from ..models import MODELS
    from ..synth import SYNTHESIZERS

    print("models:")
    for n in MODELS.names():
        print(f"  {n:20s} {(MODELS.get(n).__doc__ or '').strip()}")
    print("synthesis methods:")
    for n in SYNTHESIZERS.names():
        print(f"  {n:20s} {(SYNTHESIZERS.get(n).__doc__ or '').strip().splitlines()[0]}")
    print("compressors (each writes one artifact format that evaluate/export read):")
    for n in COMPRESSORS.names():
        print(f"  {n:20s} {COMPRESSORS.get(n).summary}")
    print("dataset specs:")
    for k, v in DATASET_SPECS.items():
        print(f"  {k:20s} {v}")
    return 0


def cmd_evaluate(a: argparse.Namespace) -> int:
    from ..evaluation.metrics import evaluate

    if not (a.data or a.estimate):
        raise DatafreeError("give --data DATASET_SPEC (top-1 on real data) or --estimate (the drop estimated without data)")
    teacher = None
    model = load_model(a)
    if a.teacher_weights or a.estimate:  # the FP32 model: the file's base model (or MODEL) at its / these weights
        teacher = _base_model(a, model)
    r: dict = {"model": a.model}
    lines = []
    if a.data:
        r.update(evaluate(model, dataset(a, a.data, model), teacher=teacher))
        line = f"{a.model} on {a.data}: top-1 {r['top1']:.2f}% (n={r['n']}), size {r['size_bits'] / 8 / 1024:.1f} KiB"
        if "agreement" in r:
            line += f", agreement with FP32 {r['agreement']:.2f}%"
        lines.append(line)
    if a.estimate:
        from ..evaluation.estimate import estimate_drop, estimate_line

        r["estimate"] = estimate_drop(teacher, model, seed=a.seed, progress=not a.no_progress)
        lines.append(f"{a.model}: " + estimate_line(r["estimate"]))
    emit(a, r, "\n".join(lines))
    return 0


def _base_model(a: argparse.Namespace, model: Any) -> Any:
    """The FP32 model a compressed file came from: its base reference at --teacher-weights or the stored weights."""
    from ..core.utils import model_device
    from ..models import load_model as load_plain

    src = record_of(model).source
    if a.estimate and not record_of(model).transforms:
        raise DatafreeError(f"{a.model} is not a compressed file; --estimate compares a file written by datafree "
                            "quantize/prune/distill/hash with the model it came from")
    distilled = [t for t in record_of(model).transforms if t.get("compressor") == "distill"]
    if distilled and not a.teacher:
        raise DatafreeError(f"{a.model} is a distilled student; give the model it learned from with --teacher "
                            "(zoo name or file.py:factory) and --teacher-weights")
    from ..compressors.artifact import read_artifact

    stored = (read_artifact(a.model) or {}).get("base", {}) if os.path.isfile(a.model) else {}
    ref = a.teacher or src.get("model_file") or src["model"]
    weights = a.teacher_weights or (None if a.teacher else stored.get("weights") or src.get("weights"))
    if weights and not os.path.isfile(weights):
        raise DatafreeError(f"the original weights {weights} of {a.model} are not there; give them with --teacher-weights")
    return load_plain(ref, weights, num_classes=src.get("num_classes"),
                      input_spec=input_spec_of(model) if ".py:" in ref else None).to(model_device(model))


def cmd_similarity(a: argparse.Namespace) -> int:
    from ..evaluation.metrics import similarity

    model = load_model(a)
    data = source(a, a.data, model, a.num)
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
        human += (f"\n{a.score} score per batch of {a.per_batch} ({len(scores)} batches): median "
                  f"{statistics.median(scores):.4f}, min {min(scores):.4f}, max {max(scores):.4f} (a detector score: "
                  "compare with batches of data you trust)")
    emit(a, r, human)
    return 0


def cmd_audit(a: argparse.Namespace) -> int:
    from ..core.utils import atomic_write
    from ..data.synthetic import SyntheticSet
    from ..evaluation.audit import audit, summary_line

    if a.out:
        check_out(a, "dir", inputs=("set",))
    syn = SyntheticSet(a.set)
    if not a.model:
        src = syn.manifest.get("teacher") or {}
        if not (isinstance(src, dict) and src.get("model") and src.get("weights") and os.path.isfile(str(src["weights"]))):
            raise DatafreeError(f"{a.set} does not name a teacher whose weights are here; give it: --model NAME --weights FILE")
        a.model, a.weights = src["model"], src["weights"]
    model = load_model(a)
    train = dataset(a, a.real, model).subset(a.num_real, a.seed)
    held = dataset(a, a.held_out, model).subset(a.num_real, a.seed)
    data = syn.data.subset(a.num, a.seed) if a.num else syn.data
    png = str(Path(a.out) / "closest_pairs.png") if a.out else None
    if a.out:
        Path(a.out).mkdir(parents=True, exist_ok=True)
    r = audit(model, data, train, held, pairs_png=png)
    r.update(set=a.set, method=syn.manifest.get("method"), real=a.real, held_out=a.held_out)
    human = (f"{a.set} ({r['method']}, {len(data)} samples) against {a.real} ({len(train)}) and {a.held_out} "
             f"({len(held)}): " + summary_line(r))
    if a.out:
        js = json.dumps(r, indent=1).encode()
        atomic_write(Path(a.out) / "audit.json", lambda f: f.write(js))
        human += f"\nwrote {a.out}/audit.json and {png} (closest synthetic/real pairs, left to right)"
    emit(a, r, human)
    return 0


def cmd_demo(a: argparse.Namespace) -> int:
    from ..demo import run_demo

    run_demo(out=a.out, progress=not a.no_progress)
    return 0


def add_list(sub: Any, ctx: Context) -> None:
    """Register `list`."""
    command(sub, "list", cmd_list, "list zoo models, synthesis methods, compressors and dataset specs")


def add(sub: Any, ctx: Context) -> None:
    """Register `evaluate`, `similarity`, `audit` and `demo`."""

    s = command(sub, "evaluate", cmd_evaluate, "top-1 of a model or quantized file on real data",
                "Top-1 accuracy on a real dataset, model size in bits and, with --teacher-weights, agreement of a "
                "quantized model with its FP32 teacher.")
    model_args(s, "model", help_extra=FILE_HELP)
    s.add_argument("--data", metavar="DATASET_SPEC", help=f"real labelled data, one of: {ctx.specs}")
    s.add_argument("--teacher-weights", help="for a compressed file: FP32 weights of the model it came from (default: "
                                             "the weights stored in the file's reference), to report agreement")
    s.add_argument("--teacher", help="for a distilled student: the teacher it learned from (zoo name or file.py:factory; "
                                     "its weights with --teacher-weights)")
    s.add_argument("--estimate", action="store_true",
                   help="for a compressed file, no data needed: estimate its top-1 drop against the model it came from "
                        "on held-out synthetic samples (bn-stats, their own seed), with an interval")
    output_args(s, seed="seed of the held-out samples of --estimate",
                json_help="print one JSON object (keys: top1 in percent, n, size_bits, estimate, ...)")

    s = command(sub, "similarity", cmd_similarity, "BN-statistics divergence of a data source through a model",
                "How far a data source's per-channel statistics at every BN layer's input are from the model's stored "
                "running statistics (KL of Gaussians, channel-averaged, summed over layers). Low means 'looks like the "
                "training data'.")
    model_args(s)
    s.add_argument("--data", required=True, metavar="SOURCE", help="synthetic-set directory, method name or dataset spec")
    s.add_argument("--num", type=int, help="use at most this many samples (default: all; 512 for on-the-fly methods)")
    s.add_argument("--per-batch", type=int, metavar="B", help="also score every batch of B samples (a detector of "
                   "inputs unlike the training data: BENCHMARKS.md has its AUROC against shifted data)")
    s.add_argument("--score", choices=["bn", "bn+oh"], default="bn+oh", help="per-batch score: bn = the BN-statistics "
                   "divergence alone; bn+oh adds the batch-mean −log max softmax (the model expects confident outputs "
                   "on its training data; on inverted CIFAR-10 colours AUROC 0.999 vs 0.989 at batch 64, BENCHMARKS.md)")
    output_args(s, seed="seed for the subset and on-the-fly synthesis",
                json_help="print one JSON object with `score` and per-layer `layers`")

    s = command(sub, "audit", cmd_audit, "privacy audit: how close synthetic samples come to real training images",
                "For every sample of SET: its nearest image of --real (the teacher's training data or a proxy) in "
                "pixel space and in the teacher's feature space (the classifier head's input), against how close "
                "--held-out real images the teacher never saw come to --real; the share of samples nearer to --real "
                "than to an equal-size --held-out set (0.5 = no sign of leaking) with its p-value against random "
                "re-splits of those real images (small = leak); the closest pairs as a PNG; and a membership-inference "
                "score of the teacher itself (AUROC of its confidence on --real vs --held-out; 0.5 = members cannot "
                "be told apart). The teacher is the one named in SET's manifest unless --model is given.")
    s.add_argument("set", metavar="SET", help="synthetic-set directory")
    s.add_argument("--real", required=True, metavar="DATASET_SPEC",
                   help="training images (or a proxy), e.g. cifar10:train-exact")
    s.add_argument("--held-out", required=True, metavar="DATASET_SPEC",
                   help="real images the teacher never saw, e.g. cifar10:test-exact")
    model_args(s, hidden=True)
    s.add_argument("--num", type=int, help="audit at most this many synthetic samples")
    s.add_argument("--num-real", type=int, help="use at most this many images of --real and of --held-out")
    output_args(s, out="directory for audit.json and closest_pairs.png", out_required=False, seed="seed of the subsets")

    s = command(sub, "demo", cmd_demo, "the point in 3 minutes: which samples can compress a model, on scikit-learn digits",
                "Train (and cache) a small BN-CNN on scikit-learn digits; quantize it to 2-bit weights and 4-bit "
                "activations calibrated on real digits / gaussian / inception / bn-stats samples, fine-tune each by KD "
                "on the same samples, and print the table (plot: OUT/demo_results.png); then export a W8A8 int8 ONNX "
                "file and time it against FP32. Needs no data files.")
    s.add_argument("--out", default="demo_out", help="output folder for the cached model and grids")
    run_args(s)
