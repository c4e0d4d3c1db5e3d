"""The low-bit frontier: calibration, + AdaRound, + BRECQ, + KD fine-tuning (after BRECQ) per data source, and one mixed-precision
row at the size of uniform W3A3. Every layer quantized (first and last too).

Run: python -m benchmarks.lowbit [--models resnet20 resnet56] [--bits w4a4 w3a3 w2a4]
                                 [--sources cifar10:train-exact bn-stats mixmix] [--recon-iters 500] [--kd-steps 500]
                                 [--recon-lr 1e-2] [--recon-act-lr 2e-2] [--round-norm sum] [--kd-weights train]
Writes benchmarks/results/lowbit.json: rows model, w_bits, a_bits, source, stage, top1_exact, top1_jpeg, seconds
(stage: calibrate | adaround | brecq | kd-finetune | mixed, and gptq with --gptq; FP32 rows have w_bits 32). `mixmix` samples come from the
pool of the four shared ResNets (20, 32, 44, 56) at once; every source has the same sample count. Finished rows are
kept, so an interrupted run resumes.
"""
from __future__ import annotations

import argparse
import functools
import time

from datafree import evaluate, load_dataset, quantize
from datafree.compressors.quant import QuantConfig, with_stage
from datafree.compressors.quant.mixed import uniform_weight_bytes
from datafree.kd.loop import KDConfig
from datafree.models.ensemble import Ensemble
from datafree.models.record import record_of

from .common import CHECKPOINTS, RowStore, cached_set, command_line, data_root, git_commit, machine, pretrained

BITS = {"w4a4": (4, 4), "w3a3": (3, 3), "w2a4": (2, 4)}
SOURCES = ("cifar10:train-exact", "bn-stats", "mixmix")
STAGES = ("calibrate", "adaround", "brecq", "kd-finetune")


def expected_rows(models: tuple[str, ...]) -> list[dict]:
    """The keys of every row of the full protocol for `models` (FP32, each bits x source x stage, one mixed row)."""
    keys: list[dict] = []
    for m in models:
        keys.append({"model": m, "w_bits": 32, "a_bits": 32, "source": "none", "stage": "fp32"})
        for src in SOURCES:
            keys += [{"model": m, "w_bits": wb, "a_bits": ab, "source": src, "stage": st}
                     for wb, ab in BITS.values() for st in STAGES]
            keys.append({"model": m, "w_bits": 3, "a_bits": 3, "source": src, "stage": "mixed"})
    return keys


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["resnet20", "resnet56"])
    p.add_argument("--bits", nargs="+", default=list(BITS), choices=list(BITS))
    p.add_argument("--sources", nargs="+", default=list(SOURCES), choices=list(SOURCES))
    p.add_argument("--num", type=int, default=512)
    p.add_argument("--iterations", type=int, default=100, help="pixel-synthesis iterations (bn-stats sets shared with ptq/kw)")
    p.add_argument("--recon-iters", type=int, default=500)
    p.add_argument("--recon-lr", type=float, default=1e-2, help="Adam lr of the rounding variables")
    p.add_argument("--recon-act-lr", type=float, default=2e-2,
                   help="activation step sizes learned with the rounding at this lr, relative to each step "
                        "(0: kept from calibration)")
    p.add_argument("--round-norm", default="sum", choices=["sum", "mean"],
                   help="scale of the reconstruction loss (QuantConfig.round_norm); lowbit_meannorm.json holds the "
                        "grid run with mean, the library default before 2026-12")
    p.add_argument("--kd-steps", type=int, default=500)
    p.add_argument("--kd-weights", default="train", choices=["train", "frozen"],
                   help="kd-finetune: integer weights trained through the STE (the rows in lowbit.json) or frozen at "
                        "BRECQ's rounding (step sizes and biases train)")
    p.add_argument("--gptq", action="store_true",
                   help="also the gptq stage: bias correction on the BN statistics + GPTQ rounding in the same pass "
                        "(--bias-correct --reconstruct gptq, the CLI's default ranges); not part of the full protocol")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="benchmarks/results/lowbit.json")
    p.add_argument("--cache", default="benchmarks/cache")
    a = p.parse_args(argv)
    root = data_root()
    t_start = time.time()
    meta = {"benchmark": "lowbit", "config": vars(a), "seed": a.seed, "commit": git_commit(), "machine": machine(),
            "command": command_line("benchmarks.lowbit", a, skip=("out", "cache", "models", "bits", "sources", "gptq")),
            "rows": "each row ran with this command and `--models M --bits B --sources S` naming it (the gptq rows with "
                    "`--gptq`; the protocol is the rest)",
            "stages": {"calibrate": "PTQ calibration (fused layout)", "adaround": "calibration + AdaRound (per layer)",
                       "brecq": "calibration + BRECQ (per block; sketch: plain MSE on the block output)",
                       "kd-finetune": f"calibration + BRECQ + {a.kd_steps} KD fine-tuning steps ("
                                      + ("LSQ steps and biases; integer weights frozen at BRECQ's rounding)"
                                         if a.kd_weights == "frozen" else "LSQ steps, weights, biases)"),
                       "mixed": "per-layer weight bits from KL sensitivity at the weight bytes of uniform W3A3, A3",
                       "gptq": "bias correction on the BN statistics + GPTQ rounding in the same pass (one pass, no "
                               "iterations; activation ranges as --ranges-from auto)"},
            "recon": f"{a.recon_iters} iterations, rounding lr {a.recon_lr}, rounding loss scale {a.round_norm}, "
                     + (f"activation step sizes learned at relative lr {a.recon_act_lr}" if a.recon_act_lr
                        else "activation step sizes kept from calibration")}
    store = RowStore(a.out, meta, selection=("models", "bits", "sources", "gptq"))
    pool = None
    recon = dict(recon_iters=a.recon_iters, recon_lr=a.recon_lr, recon_act=a.recon_act_lr > 0, round_norm=a.round_norm,
                 **({"recon_act_lr": a.recon_act_lr} if a.recon_act_lr > 0 else {}))

    def report(key: dict, stage: str) -> None:
        r = store.get(dict(key, stage=stage))
        assert r is not None
        print(f"{key['model']} W{key['w_bits']}A{key['a_bits']} {key['source']:20s} {stage:12s} {r['top1_exact']:.2f} / "
              f"{r['top1_jpeg']:.2f} ({r['seconds']:.0f} s)", flush=True)

    for name in a.models:
        model = pretrained(name)
        tests = {s: load_dataset(f"cifar10:test-{s}", record_of(model).input_spec, root) for s in ("exact", "jpeg")}

        def score(qm, tests=tests) -> dict:
            return {f"top1_{s}": evaluate(qm, d)["top1"] for s, d in tests.items()}

        store.run({"model": name, "w_bits": 32, "a_bits": 32, "source": "none", "stage": "fp32"}, lambda: score(model))

        @functools.cache
        def source_data(src: str):
            """A source's samples, loaded or synthesized on the first row that still has to run."""
            nonlocal pool
            if src == "cifar10:train-exact":
                return load_dataset(src, record_of(model).input_spec, root).subset(a.num, a.seed)
            if src == "mixmix":
                if pool is None:
                    pool = Ensemble([pretrained(n) for n in CHECKPOINTS])
                return cached_set(pool, "pool4", "mixmix", a.num, a.iterations, a.seed, a.cache)[0]
            return cached_set(model, name, src, a.num, a.iterations, a.seed, a.cache)[0]

        for src in a.sources:
            for bits in a.bits:
                wb, ab = BITS[bits]
                base = QuantConfig(w_bits=wb, a_bits=ab, quantize_first_last=True, num_calib=a.num, seed=a.seed,
                                   ranges_from="samples")  # as the stored rows (before --ranges-from auto)
                key = {"model": name, "w_bits": wb, "a_bits": ab, "source": src}
                stages_here = [
                    ("calibrate", base, None),
                    ("adaround", base.replace(reconstruct="adaround", **recon), None),
                    # also the `brecq` row: this run scores its model after reconstruction (one BRECQ, not two)
                    ("kd-finetune", base.replace(reconstruct="brecq", finetune_weights=a.kd_weights, **recon),
                     KDConfig.preset("qat", steps=a.kd_steps, seed=a.seed))]
                if a.gptq:  # the CLI's default ranges (auto), bias correction on the BN statistics in the GPTQ pass
                    stages_here.append(("gptq", base.replace(ranges_from="auto", bias_correct=True,
                                                             reconstruct="gptq"), None))
                for stage, cfg, kd in stages_here:
                    def run(cfg=cfg, kd=kd, key=key) -> dict:
                        t0 = time.time()
                        stages = None
                        if kd is not None and store.get(dict(key, stage="brecq")) is None:
                            def snap(st, key=key) -> None:  # the BRECQ row, scored before fine-tuning starts
                                store.run(dict(key, stage="brecq"), lambda: dict(
                                    score(st.qmodel), seconds=round(time.time() - t0, 2)))
                                report(key, "brecq")
                            stages = with_stage("score_brecq", snap, after="reconstruct")
                        q = quantize(model, source_data(src), cfg, kd=kd, stages=stages)
                        return dict(score(q), seconds=round(time.time() - t0, 2))

                    store.run(dict(key, stage=stage), run)
                    report(key, stage)
            # mixed precision at the weight bytes of uniform W3A3 (activations at 3 bits, every layer quantized)
            size = uniform_weight_bytes(model, 3)

            def mixed() -> dict:
                t0 = time.time()
                q = quantize(model, source_data(src), QuantConfig.from_flat(a_bits=3, target_size=size, quantize_first_last=True,
                                                      num_calib=a.num, seed=a.seed, ranges_from="samples"))
                plan = record_of(q).quant_plan
                return dict(score(q), seconds=round(time.time() - t0, 2), target_bytes=size,
                            avg_bits=round(record_of(q).reports["quantize"]["mixed"]["avg_bits"], 3),
                            plan=[[e["name"], e["w_bits"]] for e in plan])

            r = store.run({"model": name, "w_bits": 3, "a_bits": 3, "source": src, "stage": "mixed"}, mixed)
            print(f"{name} mixed@W3-size {src:20s} {r['top1_exact']:.2f} / {r['top1_jpeg']:.2f}", flush=True)
    store.finish(complete=all(store.get(k) is not None for k in expected_rows(("resnet20", "resnet56"))),
                 wall_seconds_this_run=round(time.time() - t_start, 1))


if __name__ == "__main__":
    main()
