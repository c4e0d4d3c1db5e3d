"""Where an int8 file's time goes: onnxruntime's per-node profile of the FP32 export and of `datafree export`'s W8A8 file,
summed by kind of node (1x1 / depthwise / other convolutions, adds, Q/DQ, ...), at batch 1 / 1 thread and batch 64 /
2 threads.

Run: python -m benchmarks.profile_onnx [--models mobilenetv2_cifar resnet20] [--runs 300]
Writes benchmarks/results/profile_onnx.json: rows model, file (fp32 | w8a8), batch, threads, runs, us_total and kinds
(per node kind: us, the mean microseconds per run inside that kind's kernels from onnxruntime's profiler, and n_nodes). Latency does not depend on the
weights' values, so the models are randomly initialized and calibrated on 256 Gaussian inputs (the file layout is
the one `datafree export` writes for any W8A8 model). The profiler's own overhead is included in every kind alike.
"""
from __future__ import annotations

import argparse
import collections
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from datafree import quantize
from datafree.compressors.quant import QuantConfig
from datafree.compressors.quant.export import export_onnx
from datafree.data import TensorData
from datafree.models import create_model
from datafree.models.record import record_of

from .common import RowStore, command_line, git_commit, machine


def node_kinds(opt_path: str) -> dict[str, str]:
    """Node name -> kind in onnxruntime's optimized graph: convolutions split into 1x1, depthwise and k x k."""
    import onnx

    kinds = {}
    for n in onnx.load(opt_path).graph.node:
        k = n.op_type
        if "Conv" in k:  # Conv, FusedConv (with its activation), QLinearConv
            group = next((a.i for a in n.attribute if a.name == "group"), 1)
            ks = next((list(a.ints) for a in n.attribute if a.name == "kernel_shape"), None)
            k = "conv " + ("depthwise" if group > 1 else ("1x1" if ks == [1, 1] else "k x k"))
        elif k.startswith("QLinear") or k == "QGemm":  # the integer twin of a float op: the same kind
            k = k.replace("QLinear", "").replace("QGemm", "Gemm")
        kinds[n.name] = k
    return kinds


def profile(path: Path, shape: tuple, batch: int, threads: int, runs: int) -> dict[str, dict]:
    """Mean microseconds per run and node count per node kind, from onnxruntime's profiler."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as d:
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.enable_profiling = True
        so.profile_file_prefix = str(Path(d) / "prof")
        so.optimized_model_filepath = str(Path(d) / "opt.onnx")
        so.log_severity_level = 3
        s = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        x = np.random.default_rng(0).standard_normal((batch, *shape)).astype(np.float32)
        name = s.get_inputs()[0].name
        warm = 20
        for _ in range(warm + runs):
            s.run(None, {name: x})
        events = json.loads(Path(s.end_profiling()).read_text())
        kinds = node_kinds(so.optimized_model_filepath)
    us: collections.Counter = collections.Counter()
    nodes: dict[str, set] = collections.defaultdict(set)
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            node = e["name"][: -len("_kernel_time")]
            k = kinds.get(node, e.get("args", {}).get("op_name", "?"))
            us[k] += e["dur"]
            nodes[k].add(node)
    return {k: {"us": round(v / (warm + runs), 1), "n_nodes": len(nodes[k])} for k, v in us.most_common()}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["mobilenetv2_cifar", "resnet20"])
    p.add_argument("--runs", type=int, default=300, help="profiled runs at batch 1 (batch 64: a tenth)")
    p.add_argument("--out", default="benchmarks/results/profile_onnx.json")
    p.add_argument("--cache", default="benchmarks/cache")
    a = p.parse_args(argv)
    t0 = time.time()
    meta = {"benchmark": "profile_onnx", "config": vars(a), "seed": 0, "commit": git_commit(), "machine": machine(),
            "command": command_line("benchmarks.profile_onnx", a)}
    store = RowStore(a.out, meta, selection=("models",))
    for name in a.models:
        d = Path(a.cache) / "profile" / name
        d.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(0)
        model = create_model(name).eval()
        shape = tuple(record_of(model).input_spec.shape)
        files: dict[str, Path] = {}  # exported on the first row that runs (none when every row is stored)

        def build() -> None:
            x = torch.randn(256, *shape)
            files["fp32"] = export_onnx(model, d / "fp32.onnx")
            q = quantize(model, TensorData(x, torch.zeros(256, dtype=torch.long)), QuantConfig(w_bits=8, a_bits=8, num_calib=256))
            files["w8a8"] = export_onnx(q, d / "w8a8.onnx")

        for batch, threads in ((1, 1), (64, 2)):
            for f in ("fp32", "w8a8"):
                def row(f=f, batch=batch, threads=threads) -> dict:
                    if not files:
                        build()
                    runs = a.runs if batch == 1 else max(10, a.runs // 10)
                    prof = profile(files[f], shape, batch, threads, runs)
                    return {"kinds": prof, "us_total": round(sum(v["us"] for v in prof.values()), 1), "runs": runs}

                r = store.run({"model": name, "file": f, "batch": batch, "threads": threads}, row)
                print(f"{name} {f} b{batch} t{threads}: {r['us_total']:.0f} us "
                      + ", ".join(f"{k} {v['us']:.0f}" for k, v in list(r["kinds"].items())[:5]), flush=True)
    store.finish(complete=True, wall_seconds_this_run=round(time.time() - t0, 1))


def render(path: str = "benchmarks/results/profile_onnx.json") -> str:
    """Per model and setting: microseconds per node kind, FP32 against W8A8, with the ratio of matching kinds."""
    d = json.loads(Path(path).read_text())
    rows = d["rows"]
    out = []
    for (model, b, t) in sorted({(r["model"], r["batch"], r["threads"]) for r in rows}):
        fp = next((r for r in rows if (r["model"], r["batch"], r["threads"], r["file"]) == (model, b, t, "fp32")), None)
        q = next((r for r in rows if (r["model"], r["batch"], r["threads"], r["file"]) == (model, b, t, "w8a8")), None)
        if fp is None or q is None:
            continue
        out += [f"\n**{model}, batch {b}, {t} thread{'s' if t > 1 else ''}**: FP32 {fp['us_total']:.0f} us, W8A8 "
                f"{q['us_total']:.0f} us in kernels ({q['us_total'] / fp['us_total']:.2f}x)\n",
                "| node kind | FP32 us | nodes | int8 us | nodes | int8 / FP32 |", "|---|---:|---:|---:|---:|---:|"]
        for k in list(dict.fromkeys([*fp["kinds"], *q["kinds"]])):
            f, v = fp["kinds"].get(k), q["kinds"].get(k)
            ratio = f"{v['us'] / f['us']:.2f}" if f and v and f["us"] > 0 else "-"
            out.append(f"| {k} | {f['us'] if f else 0:.0f} | {f['n_nodes'] if f else 0} | {v['us'] if v else 0:.0f} | "
                       f"{v['n_nodes'] if v else 0} | {ratio} |")
    return "\n".join(out) + f"\n\nCommand: `{d['meta']['command']}`"


if __name__ == "__main__":
    main()
