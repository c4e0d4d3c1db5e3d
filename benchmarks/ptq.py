"""Foundation benchmark: CIFAR-10 ResNets, PTQ calibrated on each synthetic source beside real data.

Run: python -m benchmarks.ptq [--models resnet20 resnet56] [--num 512] [--iterations 100]
Writes benchmarks/results/ptq_cifar.json (rows) and synthesis costs; synthetic sets are cached in
benchmarks/cache/ and every finished row is kept, so an interrupted run resumes.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from datafree import evaluate, load_dataset, predict, quantize
from datafree.compressors.quant import QuantConfig
from datafree.models.record import record_of

from .common import RowStore, cached_set, data_root, git_commit, machine, pretrained

METHODS = ("gaussian", "inception", "bn-stats", "bn-stats+inception")
SETTINGS = (("W8A8", 8, 8, False), ("W4A4", 4, 4, False), ("W4A4-all", 4, 4, True))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["resnet20", "resnet56"])
    p.add_argument("--num", type=int, default=512)
    p.add_argument("--iterations", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="benchmarks/results/ptq_cifar.json")
    p.add_argument("--cache", default="benchmarks/cache")
    p.add_argument("--layout", default="fused", choices=["fused", "inputs"],
                   help="activation layout of the simulation (inputs: the per-layer-input layout of tables made before the fused one)")
    a = p.parse_args(argv)
    root = data_root()
    t_start = time.time()
    meta = {"benchmark": "ptq_cifar", "config": vars(a), "seed": a.seed, "commit": git_commit(), "machine": machine(),
            "data_root": root, "command": "python -m benchmarks.ptq " + " ".join(f"--{k} {' '.join(map(str, v)) if isinstance(v, list) else v}" for k, v in vars(a).items() if k in ("models", "num", "iterations"))}
    store = RowStore(a.out, meta)
    for name in a.models:
        model = pretrained(name)
        tests = {s: load_dataset(f"cifar10:{s}", record_of(model).input_spec, root) for s in ("test-exact", "test-jpeg")}
        tpreds = {s: predict(model, d) for s, d in tests.items()}
        # FP32 reference
        store.run({"kind": "fp32", "model": name},
                  lambda: {f"top1_{s.split('-')[1]}": evaluate(model, d)["top1"] for s, d in tests.items()})
        sources = {"real": load_dataset("cifar10:train-exact", record_of(model).input_spec, root).subset(a.num, a.seed)}
        for method in METHODS:
            sources[method], man = cached_set(model, name, method, a.num, a.iterations, a.seed, a.cache)
            it = man.get("image_iterations", a.num)
            store.run({"kind": "synthesis", "model": name, "method": method},
                      lambda: {"seconds": man["seconds"], "image_iterations": it,
                               "img_it_per_s": round(it / max(man["seconds"], 1e-9), 1),
                               "iterations": man["config"].get("iterations", 0), "num": a.num,
                               "final_loss": {k: v for k, v in man["shard_stats"]["0"].items() if k != "seconds"}})
        for setting, wb, ab, all_layers in SETTINGS:
            for src, data in sources.items():
                def cell():
                    t0 = time.time()
                    qm = quantize(model, data, QuantConfig(w_bits=wb, a_bits=ab, quantize_first_last=all_layers, layout=a.layout,
                                                           num_calib=a.num, seed=a.seed, ranges_from="samples"))
                    tq = time.time() - t0
                    r = {"calib_seconds": round(tq, 2)}
                    for s, d in tests.items():
                        e = evaluate(qm, d, teacher_pred=tpreds[s])
                        r[f"top1_{s.split('-')[1]}"] = e["top1"]
                        r[f"agree_{s.split('-')[1]}"] = e["agreement"]
                    r["size_bits"] = e["size_bits"]
                    return r

                row = store.run({"kind": "ptq", "model": name, "setting": setting, "w_bits": wb, "a_bits": ab,
                                 "quantize_first_last": all_layers, "source": src}, cell)
                print(f"{name} {setting:9s} {src:20s} exact {row['top1_exact']:6.2f}  jpeg {row['top1_jpeg']:6.2f}", flush=True)
    store.finish(wall_seconds_this_run=round(time.time() - t_start, 1))


if __name__ == "__main__":
    main()


def render(path: str = "benchmarks/results/ptq_cifar.json") -> str:
    """Markdown tables for BENCHMARKS.md from the result file."""
    import json

    d = json.loads(Path(path).read_text())
    rows, meta = d["rows"], d["meta"]
    out = []
    for name in meta["config"]["models"]:
        fp = next((r for r in rows if r["kind"] == "fp32" and r["model"] == name), None)
        if fp is None:  # an interrupted run that has not reached this model yet
            continue
        out.append(f"\n### {name} (FP32: {fp['top1_exact']:.2f} % test-exact, {fp['top1_jpeg']:.2f} % test-jpeg)\n")
        out.append("| setting | calibration source | top-1 test-exact | Δ vs real | top-1 test-jpeg | Δ vs real | agreement w/ FP32 (exact) |")
        out.append("|---|---|---:|---:|---:|---:|---:|")
        for setting, *_ in SETTINGS:
            cells = [r for r in rows if r["kind"] == "ptq" and r["model"] == name and r["setting"] == setting]
            real = next((r for r in cells if r["source"] == "real"), None)
            for r in cells:
                de = f"{r['top1_exact'] - real['top1_exact']:+.2f}" if real and r is not real else ""
                dj = f"{r['top1_jpeg'] - real['top1_jpeg']:+.2f}" if real and r is not real else ""
                src = "real (train-exact)" if r["source"] == "real" else r["source"]
                out.append(f"| {setting} | {src} | {r['top1_exact']:.2f} | {de} | {r['top1_jpeg']:.2f} | {dj} | {r['agree_exact']:.1f} |")
    out.append("\n### Synthesis cost (512 samples, this machine)\n")
    out.append("| model | method | iterations | wall time (s) | image-iterations/s |")
    out.append("|---|---|---:|---:|---:|")
    for r in rows:
        if r["kind"] == "synthesis":
            out.append(f"| {r['model']} | {r['method']} | {r['iterations']} | {r['seconds']:.1f} | {r['img_it_per_s']:.0f} |")
    return "\n".join(out)
