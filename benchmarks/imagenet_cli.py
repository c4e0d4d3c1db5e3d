"""The CLI end to end on EfficientNet-Lite0: `datafree quantize efficientnet_lite0 --calib SOURCE --w-bits 8 --a-bits 8`
timed as a user runs it (synthesis on the fly included), then `datafree evaluate` on val1300.

Run: python -m benchmarks.imagenet_cli [--sources bn-stats imagenet:sample1000] [--bits w8a8] [--extra="--flag ..."]
     [--out benchmarks/results/imagenet_cli.json]
Writes benchmarks/results/imagenet_cli.json (the W4A8 command with GPTQ: imagenet_cli_w4a8.json): per source, the quantize command, its wall seconds, top-1 on val1300,
the drop from FP32 (same evaluate command) and the gap to the real-data row.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from .common import RowStore, cli_json, command_line, git_commit, machine


def _cli(args: list[str]) -> tuple[dict, float]:
    t0 = time.time()
    return cli_json(args), time.time() - t0


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sources", nargs="+", default=["bn-stats", "imagenet:sample1000"])
    p.add_argument("--bits", default="w8a8")
    p.add_argument("--extra", default=None, help="more `datafree quantize` options, one string (e.g. "
                                               "--extra='--bias-correct --reconstruct gptq')")
    p.add_argument("--out", default="benchmarks/results/imagenet_cli.json")
    a = p.parse_args(argv)
    w, act = a.bits[1], a.bits[3]
    meta = {"benchmark": "imagenet_cli", "config": {"bits": a.bits, **({"extra": a.extra} if a.extra else {})},
            "commit": git_commit(), "machine": machine(),
            "command": command_line("benchmarks.imagenet_cli", a, skip=("out", "sources", "extra"))
            + (f" --extra='{a.extra}'" if a.extra else "")
            + (f" --out {a.out}" if a.out != "benchmarks/results/imagenet_cli.json" else "")}
    store = RowStore(a.out, meta, selection=("sources",))
    fp = store.run({"source": "none", "stage": "fp32"}, lambda: {
        "top1": _cli(["evaluate", "efficientnet_lite0", "--data", "imagenet:val1300"])[0]["top1"]})
    with tempfile.TemporaryDirectory() as tmp:
        for src in a.sources:
            def row() -> dict:
                f = str(Path(tmp) / "q.pt")
                cmd = ["quantize", "efficientnet_lite0", "--calib", src, "--w-bits", w, "--a-bits", act,
                       *(a.extra or "").split(), "--out", f]
                _, secs = _cli(cmd)
                ev, ev_s = _cli(["evaluate", f, "--data", "imagenet:val1300"])
                return {"command": "datafree " + " ".join(cmd[:-1]) + " q.pt", "quantize_seconds": round(secs, 1),
                        "top1": ev["top1"], "drop": round(fp["top1"] - ev["top1"], 2), "evaluate_seconds": round(ev_s, 1)}

            r = store.run({"source": src, "stage": f"quantize {a.bits}"}, row)
            print(r, flush=True)
    real = store.get({"source": "imagenet:sample1000"})
    for r in store.rows:
        if real is not None and r["source"] not in ("none", "imagenet:sample1000"):
            r["behind_real"] = round(real["top1"] - r["top1"], 2)
    store.finish(complete=set(a.sources) >= {"bn-stats", "imagenet:sample1000"})


if __name__ == "__main__":
    main()
