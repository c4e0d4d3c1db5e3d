"""The CLI reference (docs/cli.md), generated from the argument parser: `python -m datafree.cli.reference`."""
from __future__ import annotations

import argparse
import os
import sys

HEADER = ("# CLI reference\n\nGenerated from the argument parser by `python -m datafree.cli.reference > docs/cli.md` "
          "(a test checks it is current). Every subcommand also prints this with `--help`.\n")


def reference() -> str:
    """Markdown: the top-level help, then each subcommand's help, in the parser's order."""
    from . import build_parser

    os.environ["COLUMNS"] = "120"  # argparse wraps at the terminal width: fixed, so the file does not depend on it
    p = build_parser()
    sub = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
    parts = [HEADER, "```\n" + p.format_help().rstrip() + "\n```\n"]
    for name, sp in sub.choices.items():
        parts.append(f"## datafree {name}\n\n```\n{sp.format_help().rstrip()}\n```\n")
    return "\n".join(parts)


if __name__ == "__main__":
    sys.stdout.write(reference())
