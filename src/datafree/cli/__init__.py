"""The `datafree` command: subcommands mirror the library verbs; each family lives in its own module."""
from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Callable, Optional, Sequence

from ..core import parallel
from ..core.errors import DatafreeError, first_line
from .common import EXIT_INTERNAL, EXIT_USAGE, Context, HelpFormatter, setup
from .options import _kd_config  # noqa: F401  (tests build the CLI's KD config)

__all__ = ["main", "build_parser", "EXIT_USAGE", "EXIT_INTERNAL"]


def families() -> list[Callable[[Any, Context], None]]:
    """Each family of subcommands registers its parsers, in this order (`datafree --help` lists them so). A new
    compressor's CLI module adds its `add` here."""
    from . import distill, inspect, prune, quantize, synthesize

    return [inspect.add_list, synthesize.add, quantize.add, distill.add, prune.add, inspect.add]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    from .._version import __version__
    from ..data.real import DATASET_SPECS
    from ..synth import SYNTHESIZERS
    p = argparse.ArgumentParser(prog="datafree", formatter_class=HelpFormatter,
                                description="Compress a trained image classifier without its training data: synthesize "
                                            "samples from the model; quantize, distill, prune, hash or extend it with "
                                            "them; evaluate on real data.")
    p.add_argument("--version", action="version", version=f"datafree {__version__}")
    sub = p.add_subparsers(dest="cmd", metavar="COMMAND")
    sub.required = True
    ctx = Context(", ".join(DATASET_SPECS), SYNTHESIZERS.names())
    for add in families():
        add(sub, ctx)
    return p


def _fail(a: argparse.Namespace, e: BaseException, debug: bool) -> int:
    """The one line (and exit code) for an error that ended a command."""
    if isinstance(e, DatafreeError):
        print(f"datafree: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    if isinstance(e, KeyboardInterrupt):
        print("datafree: interrupted; finished work is kept (synthesis resumes when the same command is re-run)",
              file=sys.stderr)
        return 130
    if debug:
        raise e
    if isinstance(e, OSError):  # disk full, permissions, a path that is not what it should be
        where = f" {e.filename}" if getattr(e, "filename", None) else ""
        print(f"datafree: error: cannot read or write{where}: {e.strerror or e} (free space or choose another path; "
              "finished shards and checkpoints are kept)", file=sys.stderr)
        return 1
    stage = f"running `datafree {a.cmd}`" if getattr(a, "cmd", None) else "starting"  # not anticipated: say so
    print(f"datafree: internal error while {stage}: {type(e).__name__}: {first_line(e, 300)}; please report it, "
          "DATAFREE_DEBUG=1 shows the traceback", file=sys.stderr)
    return EXIT_INTERNAL


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point; user errors are one line on stderr and a non-zero exit."""
    import warnings

    # torch's note about the pickle protocol of a file it then refuses would be two more lines around our one-line error
    warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--"]:  # `torchrun ... --no-python datafree -- SUBCOMMAND`: the separator reaches us
        argv = argv[1:]
    a = build_parser().parse_args(argv)
    ok = False
    try:
        if hasattr(a, "device"):
            setup(a)
        code = a.func(a)
        ok = code == 0
        return code
    except (Exception, KeyboardInterrupt) as e:
        return _fail(a, e, bool(os.environ.get("DATAFREE_DEBUG")))
    finally:
        parallel.shutdown(ok)


if __name__ == "__main__":
    sys.exit(main())
