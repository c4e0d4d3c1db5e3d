"""`make demo`'s numbers as a result file: runs the demo in a fresh folder (teacher trained from scratch) and stores
its table, export check, plot and wall time.

Run: python -m benchmarks.demo
Writes benchmarks/results/demo.json and benchmarks/results/demo_results.png.
"""
from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from datafree.demo import run_demo

from .common import command_line, git_commit, machine


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="benchmarks/results/demo.json")
    a = p.parse_args(argv)
    t0 = time.time()
    with tempfile.TemporaryDirectory() as d:
        run_demo(out=d, progress=False)
        res = json.loads((Path(d) / "demo_results.json").read_text())
        shutil.copy(Path(d) / "demo_results.png", Path(a.out).parent / "demo_results.png")
    meta = {"benchmark": "demo", "config": {"w_bits": 2, "a_bits": 4, "num": 512, "iterations": 200, "kd_steps": 150},
            "seed": 0, "commit": git_commit(), "machine": machine(), "command": command_line("benchmarks.demo", a),
            "wall_seconds": round(time.time() - t0, 1), "complete": True}
    Path(a.out).write_text(json.dumps({"meta": meta, **res}, indent=1))
    print(f"wrote {a.out} ({meta['wall_seconds']} s)")


if __name__ == "__main__":
    main()
