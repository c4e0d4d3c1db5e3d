"""`datafree synthesize`: samples from a trained model (or a pool of teachers), stored as a SyntheticSet."""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

from ..core.errors import DatafreeError
from ..models import input_spec_of
from .common import Context, check_out, command, emit, load_model, model_args, note, output_args
from .options import _synth_config, _synth_options


def ensemble(a: argparse.Namespace, first: Any) -> Any:
    """MODEL plus the --teachers pool (NAME:WEIGHTS or file.py:factory:WEIGHTS, or one .txt file listing them)."""
    from ..models.ensemble import Ensemble, parse_teacher_ref

    refs = list(a.teachers)
    if len(refs) == 1 and refs[0].endswith(".txt"):
        if not os.path.isfile(refs[0]):
            raise DatafreeError(f"--teachers list {refs[0]} not found")
        refs = [ln.strip() for ln in Path(refs[0]).read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    members = [first]
    spec = input_spec_of(first)
    for ref in refs:
        name, weights = parse_teacher_ref(ref)
        if weights is None:
            raise DatafreeError(f"--teachers {ref}: give its weights as NAME:WEIGHTS (e.g. resnet32:resnet32.th)")
        members.append(load_model(a, name=name, weights=weights, input_spec=spec, num_classes=spec.num_classes))
    return Ensemble(members).to(next(first.parameters()).device)


def cmd_synthesize(a: argparse.Namespace) -> int:
    check_out(a, "dir")
    from ..data.synthetic import read_manifest
    from ..evaluation.metrics import teacher_view
    from ..synth import SYNTHESIZERS, synthesize

    model = load_model(a)
    if a.teachers:
        model = ensemble(a, model)
    elif a.method == "mixmix":
        note("mixmix with one teacher is data mixing only; add --teachers for feature mixing")
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
        msg += (" — low: " + ("lower --bn-weight or " if "deepinversion" in a.method else "") + "raise --iterations "
                "where the class matters (distillation); quantization calibration may not need it (docs/choosing.md)")
    emit(a, info, f"wrote {len(data)} {a.method} samples to {a.out} (grid: {a.out}/grid.png, "
                  f"{man.get('seconds')} s of synthesis{msg})")
    return 0


def add(sub: Any, ctx: Context) -> None:
    """Register `synthesize`."""
    s = command(sub, "synthesize", cmd_synthesize, "make synthetic samples from a trained model",
                "Make synthetic samples from a trained model and store them as a SyntheticSet directory (float shards, "
                "labels, teacher logits, manifest.json, grid.png). An interrupted run resumes when the same command is "
                "repeated.")
    model_args(s)
    s.add_argument("--method", required=True, choices=ctx.methods, help="synthesis method")
    s.add_argument("--teachers", nargs="+", metavar="NAME:WEIGHTS",
                   help="more teachers with MODEL's input spec (zoo name or file.py:factory, colon, weights; or one .txt "
                        "file listing them): the set is synthesized from the pool at once (mixmix's feature mixing; any "
                        "BN method works on the pool)")
    _synth_options(s)
    s.add_argument("--overwrite", action="store_true", help="replace an existing set in --out")
    output_args(s, out="output directory", seed=None, json_help="print a JSON summary")
