"""Foundation benchmark: CIFAR-10 ResNets, PTQ calibrated on each synthetic source beside real data.

Run: python -m datafree.bench.ptq [--models resnet20 resnet56] [--num 512] [--iterations 100]
Writes benchmarks/results/ptq_cifar.json (rows) and synthesis costs; synthetic sets are cached in
benchmarks/cache/ and every finished row is kept, so an interrupted run resumes.
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch

from .. import evaluate, predict, load_dataset, load_model, make_config, quantize, synthesize
from ..data.synthetic import read_manifest
from ..quant import QuantConfig
from .common import RowStore, git_commit, machine

CHECKPOINTS = {"resnet20": "resnet20-12fca82f.th", "resnet32": "resnet32-d509ac18.th",
               "resnet44": "resnet44-014dd654.th", "resnet56": "resnet56-4bfd9763.th"}
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
    a = p.parse_args(argv)
    root = os.environ.get("DATAFREE_DATA", "../shared/data")
    t_start = time.time()
    meta = {"benchmark": "ptq_cifar", "config": vars(a), "seed": a.seed, "commit": git_commit(), "machine": machine(),
            "data_root": root, "command": "python -m datafree.bench.ptq " + " ".join(f"--{k} {' '.join(map(str, v)) if isinstance(v, list) else v}" for k, v in vars(a).items() if k in ("models", "num", "iterations"))}
    store = RowStore(a.out, meta)
    for name in a.models:
        model = load_model(name, str(Path(root) / "models" / CHECKPOINTS[name]))
        tests = {s: load_dataset(f"cifar10:{s}", model.input_spec, root) for s in ("test-exact", "test-jpeg")}
        tpreds = {s: predict(model, d) for s, d in tests.items()}
        # FP32 reference
        store.run({"kind": "fp32", "model": name},
                  lambda: {f"top1_{s.split('-')[1]}": evaluate(model, d)["top1"] for s, d in tests.items()})
        sources = {"real": load_dataset("cifar10:train-exact", model.input_spec, root).subset(a.num, a.seed)}
        for method in METHODS:
            out = Path(a.cache) / f"{name}_{method}_n{a.num}_it{a.iterations}_s{a.seed}"
            cfg = make_config(method, num=a.num, iterations=a.iterations, seed=a.seed)
            sources[method] = synthesize(model, method, cfg, out=str(out))
            man = read_manifest(out)
            it = man.get("image_iterations", a.num)
            store.run({"kind": "synthesis", "model": name, "method": method},
                      lambda: {"seconds": man["seconds"], "image_iterations": it,
                               "img_it_per_s": round(it / max(man["seconds"], 1e-9), 1),
                               "iterations": cfg.to_dict().get("iterations", 0), "num": a.num,
                               "final_loss": {k: v for k, v in man["shard_stats"]["0"].items() if k != "seconds"}})
        for setting, wb, ab, all_layers in SETTINGS:
            for src, data in sources.items():
                def cell():
                    t0 = time.time()
                    qm = quantize(model, data, QuantConfig(w_bits=wb, a_bits=ab, quantize_first_last=all_layers,
                                                           num_calib=a.num, seed=a.seed))
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
