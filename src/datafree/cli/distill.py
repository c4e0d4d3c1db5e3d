"""`datafree distill` and `datafree hash`: the KD loop from a stream (--method) or a fixed set (--data)."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..core.errors import DatafreeError
from ..models import input_spec_of
from .common import (
    Context,
    check_out,
    command,
    emit,
    evaluate_into,
    kd_steps,
    load_model,
    model_args,
    note,
    output_args,
    save,
    source,
    val_data,
)
from .options import (
    _configured,
    _hash_config,
    _hash_options,
    _kd_config,
    _kd_options,
    _synth_config,
    _synth_options,
    estimate_args,
    estimate_into,
)


def kd_data(a: argparse.Namespace, teacher: Any) -> tuple[Any, int, int, str]:
    """The KD loop's data from --method (rounds or a generator, the student in the loop) or --data (fixed): returns
    (source, KD steps, steps between checkpoints, its name)."""
    from ..core.seeds import derived_seed
    from ..kd.sources import RoundsConfig, stream_source

    if (a.method is None) == (a.data is None):
        raise DatafreeError("give --method (synthesize in rounds with the student in the loop) or --data "
                            "(a fixed synthetic set or dataset spec), exactly one")
    if a.method is None:
        given = [a._synth_flags[n] for n in a._synth_flags if getattr(a, "synth__" + n) is not None]
        if given:
            raise DatafreeError(f"{', '.join(given)} set synthesis in rounds and do nothing with --data; drop them or use --method")
        data = source(a, a.data, teacher, a.num)
        return data, kd_steps(a.steps, a.epochs, len(data), a.kd__batch_size), a.checkpoint_every, a.data
    rounds = _configured({"rounds": "--rounds", "per_round": "--per-round", "steps_per_round": "--steps-per-round"},
                         lambda: RoundsConfig(rounds=a.rounds, per_round=a.per_round, steps_per_round=a.steps_per_round))
    scfg = _synth_config(a, a.method, seed=a.seed, batch_size=a.per_round)
    data = stream_source(a.method, scfg, rounds, seed=derived_seed(a.seed, "stream"), progress=not a.no_progress)
    return data, a.steps or rounds.total_steps, min(a.checkpoint_every, max(1, a.steps_per_round)), a.method


def run_options(a: argparse.Namespace, teacher: Any, every: int) -> dict:
    """The resumable-run keywords every KD compressor takes."""
    if a.time_limit is not None and not a.time_limit > 0:
        raise DatafreeError(f"--time-limit must be a positive number of seconds, got {a.time_limit}")
    return dict(checkpoint_dir=a.checkpoint_dir or a.out + ".ckpt", val=val_data(a, teacher), progress=not a.no_progress,
                overwrite=a.overwrite, checkpoint_every=every, time_limit=a.time_limit)


def curve_into(a: argparse.Namespace, res: Any, info: dict, title: str) -> None:
    """With a validation curve: OUT.curve.json and OUT.curve.png."""
    from ..evaluation.metrics import save_curve

    if res.curve:
        info["curve"] = save_curve(res.curve, a.out, title)


def cmd_distill(a: argparse.Namespace) -> int:
    check_out(a, "file")
    import torch

    from ..compressors.base import run_compressor

    teacher = load_model(a)
    spec = input_spec_of(teacher)
    data, steps, every, src = kd_data(a, teacher)
    torch.manual_seed(a.seed)  # a student from scratch starts from the same weights for the same --seed
    student = load_model(a, name=a.student, weights=a.student_weights, input_spec=spec, num_classes=spec.num_classes)
    kd = _kd_config(a, steps)
    if kd.freeze_bn and not a.student_weights:
        note("--freeze-bn keeps a new student's BN statistics at their initial 0/1, so it trains without "
             "normalization and usually fails; use it with --student-weights (a pretrained student)")
    res = run_compressor(teacher, "distill", data, kd, student=student, data_name=src, **run_options(a, teacher, every))
    r = res.report
    info: dict[str, Any] = {"out": a.out, "student": a.student, "method": src, **r}
    est_line = estimate_into(a, res.model, teacher, info)
    save(res.model, a.out, teacher=teacher, extra={"summary": {k: v for k, v in r.items() if v is not None},
                                                   "estimate": info.get("estimate")})
    curve_into(a, res, info, f"{a.student} from {src}, validated on {a.val}")
    human = (f"saved student {a.student} distilled from {src} ({r['samples']} samples, {r['steps']} steps, "
             f"{r['seconds']:.0f} s) to {a.out}; evaluate it with `datafree evaluate {a.out} --data ...`")
    human += evaluate_into(a, res.model, teacher, info, "student") + est_line
    emit(a, info, human)
    return 0


def cmd_hash(a: argparse.Namespace) -> int:
    check_out(a, "file")
    check_out(a, "file", attr="materialize")
    from ..compressors.base import run_compressor
    from ..compressors.hashing import materialize
    from ..core import parallel
    from ..core.utils import save_atomic

    cfg = _hash_config(a, seed=a.seed)
    teacher = load_model(a)
    data, steps, every, src = kd_data(a, teacher)
    res = run_compressor(teacher, "hash", data, cfg, kd=_kd_config(a, steps), **run_options(a, teacher, every))
    hi = res.report
    info: dict[str, Any] = {"out": a.out, "data": src, "steps": steps, "seconds": hi["seconds"],
                            "variables": hi["variables"], "teacher_variables": hi["teacher_variables"],
                            "fraction": round(hi["variables"] / hi["teacher_variables"], 4), "n": hi["n"], "M": hi["M"]}
    est_line = estimate_into(a, res.model, teacher, info)
    path = save(res.model, a.out, teacher=teacher, extra={"data": src, "hash": hi, "estimate": info.get("estimate")})
    info["bytes"] = Path(path).stat().st_size
    human = (f"hashed {hi['teacher_variables']} variables into {hi['variables']} ({info['fraction']:.1%}: X {hi['n']}x{hi['M']}, "
             f"Y {hi['M']}x{hi['n']}, per-tensor scales, BN), trained {steps} KD steps on {src}; saved to {a.out} "
             f"({info['bytes'] / 1024:.0f} KiB)")
    if a.materialize:
        plain = materialize(res.model)
        if parallel.is_main():
            save_atomic({k: v.detach().cpu() for k, v in plain.state_dict().items()}, a.materialize)
        info["materialized"] = a.materialize
        human += f"; plain state dict in {a.materialize}"
    curve_into(a, res, info, f"hashed {a.model} ({info['fraction']:.0%}) from {src}, validated on {a.val}")
    human += evaluate_into(a, res.model, teacher, info, "hashed") + est_line
    emit(a, info, human)
    return 0


def kd_data_options(s: argparse.ArgumentParser, ctx: Context, preset: str) -> None:
    """Where a KD loop gets its data (--method stream or --data), its length, checkpoints and validation."""
    s.add_argument("--method", choices=ctx.methods, help="synthesis method as a stream: pixel methods and cmi/fast "
                   "synthesize in rounds into a growing pool; dafl/rdskd train a generator first, then every batch is "
                   "fresh")
    s.add_argument("--data", metavar="SOURCE", help=f"fixed data instead: synthetic-set directory or dataset spec ({ctx.specs})")
    s.add_argument("--num", type=int, help="with --data: use at most this many samples")
    s.add_argument("--rounds", type=int, default=4, help="with --method: synthesize-then-distill rounds")
    s.add_argument("--per-round", type=int, default=256, help="with --method: samples synthesized per round (generator "
                   "methods: the generator batch)")
    s.add_argument("--steps-per-round", type=int, default=200, help="with --method: KD steps after each round")
    _synth_options(s, ["iterations", "lr", "bf16", "bn_weight", "latent_dim", "width", "adv", "joint"],
                   flags={"lr": "--synth-lr"}, help_extra=" (with --method)")
    s.add_argument("--steps", type=int, default=0, help="KD steps (with --data: overrides --epochs; with --method: "
                   "overrides rounds x steps-per-round)")
    s.add_argument("--epochs", type=int, default=20, help="with --data: passes over the data")
    _kd_options(s, preset, ["lr", "optimizer", "weight_decay", "temperature", "batch_size", "freeze_bn", "augment",
                            "mixup", "val_every", "bf16", "channels_last"])
    s.add_argument("--checkpoint-dir", help="where checkpoints and the sample pool go (default: OUT.ckpt)")
    s.add_argument("--checkpoint-every", type=int, default=200, help="with --data: steps between checkpoints")
    s.add_argument("--time-limit", type=float, metavar="SECONDS", help="stop after this many seconds of the run "
                   "(resumed pieces included) even if steps remain; the learning-rate schedule still spans all steps, "
                   "so plan --steps to fit")
    s.add_argument("--overwrite", action="store_true", help="discard an existing checkpoint instead of resuming")


VAL_HELP = "real data for validation accuracy in the progress log; the curve goes to OUT.curve.json and OUT.curve.png"


def add(sub: Any, ctx: Context) -> None:
    """Register `distill` and `hash`."""
    s = command(sub, "distill", cmd_distill, "train a student from the teacher without its data",
                "Data-free knowledge distillation: train STUDENT (zoo name or file.py:factory, from scratch or "
                "--student-weights) to match TEACHER's logits (KL at a temperature) on synthetic samples. With "
                "--method, run rounds: synthesize --per-round samples with the current student in the loop "
                "(adaptive-deepinversion needs this), add them to a pool, distill --steps-per-round steps. With --data, "
                "distill on a fixed synthetic set or dataset spec. Checkpoints go to --checkpoint-dir after every round "
                "(or --checkpoint-every steps); re-running the same command resumes. The output is a datafree file that "
                "`datafree evaluate OUT --data ...` loads.")
    model_args(s, "teacher")
    s.add_argument("--student", required=True, help="student: zoo model name or path/to/file.py:factory")
    s.add_argument("--student-weights", help="start the student from these weights (default: from scratch)")
    kd_data_options(s, ctx, "student")
    estimate_args(s)
    output_args(s, out="output file (.pt), read by `datafree evaluate/export`", val=VAL_HELP,
                eval="evaluate the student (and teacher) on this real dataset")

    s = command(sub, "hash", cmd_hash, "shrink a model's variables to a budget (Structured Multi-Hashing), trained by KD",
                "Structured Multi-Hashing (Eban et al. 2020): every conv/linear weight and bias of MODEL is read from "
                "one virtual n x n matrix X·Y (2·M·n variables, M from the budget) times a learnable per-tensor scale; "
                "BN stays as it is. The hashed copy learns MODEL's logits by KD on --method (a generator or rounds, the "
                "student in the loop) or --data (a fixed synthetic set or dataset spec). The file stores X, Y, scales "
                "and BN, so its size follows the budget; `datafree evaluate/export FILE` read it, --materialize writes "
                "a plain state dict.")
    model_args(s)
    _hash_options(s)
    kd_data_options(s, ctx, "hash")
    s.add_argument("--materialize", metavar="FILE", help="also write a plain state dict of the model's architecture "
                   "(every weight materialized) for deployment: `datafree evaluate MODEL --weights FILE` loads it")
    estimate_args(s)
    output_args(s, out="output file (.pt) with X, Y, scales and BN", val=VAL_HELP,
                eval="evaluate the hashed model (and MODEL) on this real dataset")
