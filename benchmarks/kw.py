"""The Knowledge Within table: calibration, + BN re-estimation, + KD fine-tuning, per data source.

Run: python -m benchmarks.kw [--steps 500] [--cells r20-w4a4 r20-w3a3 r20-w8a8 r56-w4a4]
Writes benchmarks/results/kw_table.json: {"meta": ..., "rows": [...]}, each row with
model, w_bits, a_bits, source, stage, top1_exact, top1_jpeg, seconds. Synthetic sets are shared with
the PTQ benchmark (benchmarks/cache); finished rows are kept, so an interrupted run resumes.
"""
from __future__ import annotations

import argparse
import copy
import time

from datafree import evaluate, load_dataset, predict, quantize
from datafree.compressors.quant import QuantConfig, finetune_quantized_
from datafree.kd.loop import KDConfig
from datafree.models.record import record_of
from datafree.synth import make_config

from .common import RowStore, cached_set, command_line, data_root, git_commit, machine, pretrained

CELLS = {"r20-w4a4": ("resnet20", 4, 4), "r20-w3a3": ("resnet20", 3, 3), "r20-w8a8": ("resnet20", 8, 8),
         "r56-w4a4": ("resnet56", 4, 4)}
SOURCES = ("real", "gaussian", "inception", "bn-stats", "bn-stats+inception")
GEN_SOURCES = ("dafl", "rdskd", "cmi", "fast")  # generator methods (opt-in): a stored set at the method's own iterations


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cells", nargs="+", default=list(CELLS), choices=list(CELLS))
    p.add_argument("--sources", nargs="+", default=list(SOURCES), choices=list(SOURCES + GEN_SOURCES))
    p.add_argument("--num", type=int, default=512)
    p.add_argument("--iterations", type=int, default=100, help="synthesis iterations (sets shared with the PTQ benchmark)")
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--temperature", type=float, default=4.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="benchmarks/results/kw_table.json")
    p.add_argument("--cache", default="benchmarks/cache")
    p.add_argument("--layout", default="fused", choices=["fused", "inputs"],
                   help="activation layout of the simulation (inputs: the per-layer-input layout of tables made before the fused one)")
    a = p.parse_args(argv)
    root = data_root()
    t_start = time.time()
    cmd = command_line("benchmarks.kw", a)
    meta = {"benchmark": "kw_table", "config": vars(a), "seed": a.seed, "commit": git_commit(), "machine": machine(),
            "command": cmd,
            "stages": {"calibrate": "PTQ calibration on the source (every layer at the given bits)",
                       "bn-reestimate": "calibration, then BN re-estimation on the source, then re-calibration",
                       "kd-finetune": "calibration, then KD fine-tuning (LSQ step sizes, weights, biases) on the source"}}
    store = RowStore(a.out, meta, selection=("cells", "sources"))
    models: dict = {}
    for cell in a.cells:
        name, wb, ab = CELLS[cell]
        if name not in models:
            m = pretrained(name)
            tests = {s: load_dataset(f"cifar10:test-{s}", record_of(m).input_spec, root) for s in ("exact", "jpeg")}
            preds = {s: predict(m, d) for s, d in tests.items()}
            models[name] = (m, tests, preds)
            store.run({"model": name, "w_bits": 32, "a_bits": 32, "source": "none", "stage": "fp32"},
                      lambda: {f"top1_{s}": evaluate(m, d)["top1"] for s, d in tests.items()})
        model, tests, preds = models[name]

        def score(qm):
            r = {}
            for s, d in tests.items():
                e = evaluate(qm, d, teacher_pred=preds[s])
                r[f"top1_{s}"], r[f"agree_{s}"] = e["top1"], e["agreement"]
            return r

        for src in a.sources:
            if src == "real":
                data = load_dataset("cifar10:train-exact", record_of(model).input_spec, root).subset(a.num, a.seed)
            else:
                its = make_config(src).iterations if src in GEN_SOURCES else a.iterations
                data, _ = cached_set(model, name, src, a.num, its, a.seed, a.cache)
            qcfg = QuantConfig(w_bits=wb, a_bits=ab, quantize_first_last=True, num_calib=a.num, seed=a.seed, layout=a.layout,
                               ranges_from="samples")  # as the stored rows (before --ranges-from auto)
            key = {"model": name, "w_bits": wb, "a_bits": ab, "source": src}
            state = {}

            def calibrate():
                t0 = time.time()
                state["q"] = quantize(model, data, qcfg)
                sec = time.time() - t0
                return dict(score(state["q"]), seconds=round(sec, 2))

            store.run(dict(key, stage="calibrate"), calibrate)

            def reest():
                t0 = time.time()
                q = quantize(model, data, qcfg.replace(bn_reestimate=True))
                sec = time.time() - t0
                return dict(score(q), seconds=round(sec, 2))

            store.run(dict(key, stage="bn-reestimate"), reest)

            def finetune():
                t0 = time.time()
                q = state.get("q") or quantize(model, data, qcfg)
                q = copy.deepcopy(q)
                kd = KDConfig(steps=a.steps, batch_size=a.batch_size, lr=a.lr, temperature=a.temperature, seed=a.seed)
                hist = finetune_quantized_(q, model, data, kd)
                sec = time.time() - t0
                return dict(score(q), seconds=round(sec, 2), final_kd_loss=round(sum(h["loss"] for h in hist[-20:]) / 20, 5))

            r = store.run(dict(key, stage="kd-finetune"), finetune)
            print(f"{name} W{wb}A{ab} {src:20s} kd-finetune exact {r['top1_exact']:.2f} jpeg {r['top1_jpeg']:.2f}", flush=True)
    store.finish(complete=set(a.cells) == set(CELLS) and set(a.sources) == set(SOURCES),  # a subset run leaves it incomplete
                 wall_seconds_this_run=round(time.time() - t_start, 1))


def render(path: str = "benchmarks/results/kw_table.json") -> str:
    """Markdown table for BENCHMARKS.md."""
    import json
    from pathlib import Path

    rows = json.loads(Path(path).read_text())["rows"]
    out = ["| model | bits | source | calibrate exact / jpeg | + BN re-est. exact / jpeg | + KD fine-tune exact / jpeg | KD cell time (s) |",
           "|---|---|---|---|---|---|---:|"]
    fps = {r["model"]: r for r in rows if r["stage"] == "fp32"}
    seen = []
    for r in rows:
        k = (r["model"], r["w_bits"], r["a_bits"], r["source"])
        if r["stage"] == "fp32" or k in seen:
            continue
        seen.append(k)
        st = {x["stage"]: x for x in rows if (x["model"], x["w_bits"], x["a_bits"], x["source"]) == k}

        def f(s):
            x = st.get(s)
            return f"{x['top1_exact']:.2f} / {x['top1_jpeg']:.2f}" if x else "–"

        src = "real (train-exact)" if k[3] == "real" else k[3]
        kd = st.get("kd-finetune")
        out.append(f"| {k[0]} | W{k[1]}A{k[2]} | {src} | {f('calibrate')} | {f('bn-reestimate')} | {f('kd-finetune')} | "
                   f"{kd['seconds']:.0f} |" if kd else f"| {k[0]} | W{k[1]}A{k[2]} | {src} | {f('calibrate')} | {f('bn-reestimate')} | – | |")
    fp_line = "; ".join(f"{m} FP32 {r['top1_exact']:.2f} / {r['top1_jpeg']:.2f}" for m, r in fps.items())
    return fp_line + "\n\n" + "\n".join(out)


if __name__ == "__main__":
    main()
