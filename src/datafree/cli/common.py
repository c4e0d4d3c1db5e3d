"""What every subcommand shares: the model arguments, the run options (device, threads, progress, data root), the
output options (--out, --json, --seed, --eval, --val) declared once, and loading, reporting and saving."""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Optional, Sequence

from ..core import parallel
from ..core.errors import DatafreeError, first_line
from ..models import input_spec_of

EXIT_USAGE = 2  # bad input: an option, a file, a dataset spec
EXIT_INTERNAL = 3  # a defect of datafree (reported as an internal error)
MODEL_HELP = "zoo model name (see `datafree list`) or path/to/file.py:factory"
FILE_HELP = ", or a file written by `datafree quantize/prune/distill/hash/extend`"


@dataclasses.dataclass(frozen=True)
class Context:
    """What the subcommand families need to declare their options: dataset specs and synthesis methods."""

    specs: str  # the dataset specs, comma-separated (for help texts)
    methods: list[str]  # the synthesis methods' names


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows an option's default only when it says something (not None/False, not already in the help text)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        h = action.help or ""
        if (action.default is None or action.default is False or action.default == argparse.SUPPRESS or "default" in h
                or isinstance(action, argparse._StoreFalseAction)):
            return h
        return super()._get_help_string(action)


def command(sub: Any, name: str, func: Any, help: str, description: Optional[str] = None) -> argparse.ArgumentParser:
    """A subcommand parser with our formatter, bound to `func`."""
    s = sub.add_parser(name, help=help, description=description or help, formatter_class=HelpFormatter)
    s.set_defaults(func=func)
    return s


def model_args(p: argparse.ArgumentParser, positional: str = "model", help_extra: str = "",
               hidden: bool = False) -> None:
    """MODEL (or --model when `hidden`), --weights and the input spec of a user model."""
    if hidden:
        p.add_argument("--model", help="teacher (zoo name or file.py:factory; default: SET's manifest)")
    else:
        p.add_argument("model", metavar=positional.upper(), help=MODEL_HELP + help_extra)
    p.add_argument("--weights", help="state dict or checkpoint (.th/.pt), loaded with weights_only=True")
    spec_help = {"--num-classes": "number of classes (default: the model's own)",
                 "--input-shape": "for user models: C,H,W (e.g. 3,32,32)",
                 "--mean": "for user models: per-channel normalization mean, comma-separated",
                 "--std": "for user models: per-channel normalization std, comma-separated",
                 "--model-file": "for a file made from your own model: its definition (a file never chooses code to "
                                 "run; the architecture is checked against the fingerprint stored in the file)"}
    for flag, h in spec_help.items():
        kw: dict[str, Any] = {"type": int} if flag == "--num-classes" else {}
        if flag == "--model-file":
            kw["metavar"] = "FILE.py:FACTORY"
        p.add_argument(flag, help=argparse.SUPPRESS if hidden else h, **kw)


def run_args(p: argparse.ArgumentParser) -> None:
    """Where the data sets are, the device, CPU threads and progress bars."""
    p.add_argument("--data-root", help="folder with the data sets (default: $DATAFREE_DATA)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda, cuda:1 (default: cpu)")
    p.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def output_args(p: argparse.ArgumentParser, out: Optional[str] = None, out_required: bool = True,
                seed: Optional[str] = "random seed", eval: Optional[str] = None, val: Optional[str] = None,
                json_help: str = "print one JSON object") -> None:
    """The output options, declared once: --out, --seed, --eval, --val and --json (each only when given a help)."""
    if out:
        p.add_argument("--out", required=out_required, help=out)
    if seed:
        p.add_argument("--seed", type=int, default=0, help=seed)
    if eval:
        p.add_argument("--eval", metavar="DATASET_SPEC", help=eval)
    if val:
        p.add_argument("--val", metavar="DATASET_SPEC", help=val)
    p.add_argument("--json", action="store_true", help=json_help)
    run_args(p)


def numbers(s: Optional[str], what: str, kind: type = float) -> Optional[tuple]:
    """Comma-separated numbers of `kind` (None stays None); for int, `1.7` or `3.0` is refused, never truncated."""
    if s is None:
        return None
    try:
        return tuple(kind(v) for v in s.split(","))
    except ValueError:
        noun = "integers" if kind is int else "numbers"
        raise DatafreeError(f"{what} must be comma-separated {noun}, got {s!r}") from None


def _spec(a: argparse.Namespace) -> Any:
    """The input spec given by --input-shape/--mean/--std/--num-classes, if any."""
    from ..models import InputSpec

    if not (a.input_shape or a.mean or a.std):
        return None
    shape = numbers(a.input_shape, "--input-shape", int)
    if not (shape and a.mean and a.std and a.num_classes):
        raise DatafreeError("--input-shape, --mean, --std and --num-classes go together; give all four")
    try:
        return InputSpec(shape, numbers(a.mean, "--mean"), numbers(a.std, "--std"), a.num_classes)
    except DatafreeError as e:
        raise DatafreeError(f"bad input spec: {e}") from None


def load_model(a: argparse.Namespace, name: Optional[str] = None, weights: Optional[str] = None,
               input_spec: Any = None, num_classes: Optional[int] = None) -> Any:
    """MODEL as the options give it (or another model, e.g. a student, by name), on --device."""
    import torch

    from ..compressors.artifact import load_any

    if name is None:
        m = load_any(a.model, a.weights, num_classes=a.num_classes, input_spec=_spec(a),
                     model_file=getattr(a, "model_file", None))
    else:
        m = load_any(name, weights, num_classes=num_classes, input_spec=input_spec)
    return m.to(torch.device(a.device))


def setup(a: argparse.Namespace) -> None:
    """Threads, device and (under torchrun) the process group."""
    import torch

    from ..core.runtime import tune_allocator

    tune_allocator()
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


def emit(a: argparse.Namespace, obj: dict, human: str) -> None:
    """Print the result (one JSON object with --json); under torchrun rank 0 reports for the job."""
    if not parallel.is_main():
        return
    print(json.dumps(obj) if getattr(a, "json", False) else human)


def note(msg: str) -> None:
    """A note on stderr (rank 0)."""
    import sys

    if parallel.is_main():
        print(f"note: {msg}", file=sys.stderr)


def dataset(a: argparse.Namespace, spec_str: str, model: Any) -> Any:
    """A real dataset spec, at the model's input spec."""
    from ..data.real import load_dataset

    return load_dataset(spec_str, input_spec_of(model), a.data_root)


def val_data(a: argparse.Namespace, model: Any) -> Any:
    """--val as a dataset (None when not given)."""
    return dataset(a, a.val, model) if getattr(a, "val", None) else None


def evaluate_into(a: argparse.Namespace, model: Any, teacher: Any, info: dict, what: str) -> str:
    """With --eval: top-1 of `model` and of its teacher on that real set, added to `info`; returns the human line."""
    if not getattr(a, "eval", None):
        return ""
    from ..evaluation.metrics import evaluate

    r = evaluate(model, dataset(a, a.eval, teacher), teacher=teacher)
    info.update(top1=r["top1"], teacher_top1=r["teacher_top1"], n=r["n"])
    if "agreement" in r:
        info["agreement"] = r["agreement"]
    return f"\n{a.eval}: {what} top-1 {r['top1']:.2f}% (original {r['teacher_top1']:.2f}%)"


def source(a: argparse.Namespace, spec: str, model: Any, num: Optional[int]) -> Any:
    """A SOURCE argument (synthetic set, method run on the fly, dataset spec) as data."""
    from ..kd.sources import load_source

    return load_source(spec, model, num=num, seed=a.seed, data_root=a.data_root, progress=not a.no_progress)


def check_out(a: argparse.Namespace, kind: str = "file", attr: str = "out",
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


def save(model: Any, out: str, **kw: Any) -> Path:
    """save_artifact on rank 0 (the only process without torchrun); the other ranks wait until the file exists."""
    from ..compressors.artifact import save_artifact

    path = save_artifact(model, out, **kw) if parallel.is_main() else Path(out)
    parallel.barrier()
    return path


def kd_steps(steps: int, epochs: int, n: int, batch_size: int) -> int:
    """Explicit steps, else passes over n samples at this batch size."""
    return steps or epochs * max(1, n // batch_size)
