"""`datafree prune` and `datafree extend`."""
from __future__ import annotations

import argparse
from typing import Any

from ..core.errors import DatafreeError
from ..models import input_spec_of
from .common import (
    Context,
    check_out,
    command,
    dataset,
    emit,
    evaluate_into,
    kd_steps,
    load_model,
    model_args,
    output_args,
    save,
    source,
    val_data,
)
from .options import _configured, _kd_config, _kd_options, estimate_args, estimate_into


def cmd_prune(a: argparse.Namespace) -> int:
    check_out(a, "file")
    from ..compressors.base import run_compressor
    from ..compressors.prune import PruneConfig

    teacher = load_model(a)
    pcfg = _configured({"sparsity": "--sparsity"}, lambda: PruneConfig(sparsity=a.sparsity, structured=bool(a.structured)))
    data, kd, run = None, None, {}
    if a.finetune_epochs or a.finetune_steps:
        if not a.data:
            raise DatafreeError("fine-tuning needs --data SOURCE (synthetic-set directory, method or dataset spec)")
        data = source(a, a.data, teacher, a.num)
        kd = _kd_config(a, kd_steps(a.finetune_steps, a.finetune_epochs, len(data), a.kd__batch_size))
        run = dict(checkpoint_dir=a.checkpoint_dir or a.out + ".ckpt", val=val_data(a, teacher), overwrite=a.overwrite)
    res = run_compressor(teacher, "prune", data, pcfg, kd=kd, progress=not a.no_progress, **run)
    r = res.report
    info: dict[str, Any] = {"out": a.out, "mode": "structured" if a.structured else "unstructured",
                            "sparsity": a.sparsity, "data": a.data, **{k: v for k, v in r.items() if k != "cut"}}
    est_line = estimate_into(a, res.model, teacher, info)
    save(res.model, a.out, teacher=teacher, extra={"data": a.data, "steps": r["steps"], "estimate": info.get("estimate")})
    if a.structured:
        what = f"structured: {len(r['cut'])} convs lose {a.sparsity:.0%} of their output channels"
    else:
        what = f"unstructured: {a.sparsity:.0%} of conv/linear weights zeroed"
    human = (f"{what}; FLOPs {r['flops_before'] / 1e6:.1f}M -> {r['flops_after'] / 1e6:.1f}M "
             f"({100 * (1 - r['flops_after'] / r['flops_before']):.1f}% removed), params {r['params_before'] / 1e3:.1f}k"
             f" -> {r['nonzero_params_after'] / 1e3:.1f}k nonzero; fine-tuned {r['steps']} steps on {a.data or '-'}; "
             f"saved to {a.out} (evaluate it with `datafree evaluate {a.out} --data ...`)")
    if not a.structured:
        human += "\nnote: unstructured zeros shrink the model only in sparse storage; FLOPs are counted dense"
    human += evaluate_into(a, res.model, teacher, info, "pruned") + est_line
    emit(a, info, human)
    return 0


def class_list(s: str) -> list[int]:
    """`5-9` or `5,6,7` as a list of labels."""
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
    check_out(a, "file")
    from ..compressors.base import run_compressor
    from ..compressors.continual import ContinualConfig, split_accuracy

    old = load_model(a)
    spec = input_spec_of(old)
    classes = class_list(a.new_classes)
    if min(classes) < spec.num_classes:
        raise DatafreeError(f"--new-classes must start at {spec.num_classes} or above: the old model already has "
                            f"classes 0-{spec.num_classes - 1} (set its size with --num-classes)")
    total = max(classes) + 1
    new = dataset(a, a.new_data, old).only_classes(classes).subset(a.num_new, a.seed)
    if len(new) == 0:
        raise DatafreeError(f"{a.new_data} has no images of classes {a.new_classes}")
    inverted = source(a, a.inverted, old, a.num_inverted) if a.method == "deepinversion" else None
    kd = _kd_config(a, a.steps)
    ccfg = _configured({"kd_weight": "--kd-weight"}, lambda: ContinualConfig(method=a.method, kd_weight=a.kd_weight,
                                                                             temperature=kd.temperature))
    res = run_compressor(old, "extend", new, ccfg, num_classes=total, kd=kd, synthetic=inverted,
                         progress=not a.no_progress)
    save(res.model, a.out, teacher=old)
    info: dict[str, Any] = {"out": a.out, "method": a.method, "num_classes": total, "new_samples": len(new),
                            "inverted_samples": 0 if inverted is None else len(inverted), "seconds": res.report["seconds"]}
    human = (f"saved a {total}-class model ({a.method}, {len(new)} new-class images"
             + (f", {len(inverted)} inverted old-class samples" if inverted is not None else "")
             + f") to {a.out}; evaluate it with `datafree evaluate {a.out} --data ...`")
    if a.eval:
        test = dataset(a, a.eval, res.model).only_classes(range(total))
        info.update(split_accuracy(res.model, test, spec.num_classes))
        human += (f"\n{a.eval}: top-1 old classes {info['top1_old']:.2f}%, new {info['top1_new']:.2f}%, "
                  f"all {info['top1_all']:.2f}%")
    emit(a, info, human)
    return 0


def add(sub: Any, ctx: Context) -> None:
    """Register `prune` and `extend`."""
    s = command(sub, "prune", cmd_prune, "prune a model and recover accuracy by KD on synthetic data",
                "Prune MODEL, then fine-tune it by distillation from the unpruned model on --data (synthetic set, "
                "method or dataset spec). --structured removes output channels of every conv whose channels feed only "
                "one other conv (the inner convs of residual blocks), lowest BN-folded L1 norm first, so FLOPs really "
                "drop; --unstructured zeroes the smallest weights globally. Prints FLOPs and parameters before and "
                "after.")
    model_args(s)
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
    s.add_argument("--checkpoint-dir", help="fine-tuning checkpoints (default: OUT.ckpt); re-running resumes")
    s.add_argument("--overwrite", action="store_true", help="discard an existing checkpoint instead of resuming")
    estimate_args(s)
    output_args(s, out="output file (.pt), read by `datafree evaluate/export`",
                val="real data for validation accuracy in the progress bar",
                eval="evaluate pruned and unpruned model on this real dataset")

    s = command(sub, "extend", cmd_extend, "add classes to a classifier without the old classes' data",
                "Data-free continual learning: grow MODEL's linear head to the new classes and train on real images of "
                "the new classes only. --method deepinversion also trains on inverted samples of the old classes "
                "(labelled by the old model) and distills the old model's outputs on them; lwf distills the old "
                "outputs on the new images only; finetune-new does neither (it forgets). Give the old model's class "
                "count with --num-classes.")
    model_args(s)
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
    output_args(s, out="output file (.pt), read by `datafree evaluate/export`",
                eval="report old / new / all-class top-1 on this real dataset")
