"""Real scale: EfficientNet-Lite0 (ImageNet, 224 px) quantized from each calibration source, on this CPU.

Run: python -m benchmarks.imagenet [--bits w8a8 w4a8 w4a4] [--sources real gaussian bn-stats bn-stats-lowres]
     [--stages calibrate brecq] [--num 64] [--iterations 100] [--low-res 0.75] [--recon-iters 200] [--eval-num 1300]
Writes benchmarks/results/imagenet_lite0.json: rows model, w_bits, a_bits, source, stage, top1 (val1300, the real
ILSVRC2012 validation images), agreement (same prediction as FP32), seconds (synthesis + quantization; synthesis
recorded apart), resumable row by row. First and last layer stay at 8 bits (weights and input) in every row.
Synthetic sets are stored under benchmarks/cache/ and shared by the rows of one source. Needs the extra:
pip install -e '.[imagenet]'.
"""
from __future__ import annotations

import argparse
import time

import torch

import datafree as df
from datafree.compressors.quant import QuantConfig
from datafree.core.utils import predict
from datafree.kd.loop import KDConfig

from .common import RowStore, cached_set, command_line, data_root, git_commit, machine

SOURCES = {"real": ("imagenet:sample1000", {}), "gaussian": ("gaussian", {}), "bn-stats": ("bn-stats", {}),
           "bn-stats-lowres": ("bn-stats", {"low_res": None}),  # None: --low-res
           "bn-stats-fast": ("bn-stats", {"low_res": None, "channels_last": True, "bf16": True}),
           # 90 % of the iterations at a quarter of each side (56 px), the last 10 % at 224 px
           "bn-stats-quarter": ("bn-stats", {"low_res": 0.9, "low_res_scale": 0.25}),
           # the best generator method of the distillation benchmark (FastDFKD): 4 rounds of 20 steps on batches of 16,
           # about bn-stats-lowres's synthesis time on this CPU (a step of generator + teacher at 224 px: ~2 s)
           "fast": ("fast", {"iterations": 20, "batch_size": 16}),
           "fast-x2": ("fast", {"iterations": 40, "batch_size": 16})}  # twice the steps per round


def _set_args(source: str, a: argparse.Namespace) -> tuple[str, int, dict]:
    """A synthetic source's method, iterations and the rest of its settings (batch size included), as stored."""
    name, over = SOURCES[source]
    over = {k: (a.low_res if v is None else v) for k, v in over.items()}
    iterations = over.pop("iterations", a.iterations)
    return name, iterations, {"batch_size": over.pop("batch_size", min(32, a.num)), **over}


def _calib(model, source: str, a: argparse.Namespace) -> tuple[df.TensorData, float]:
    spec = df.record_of(model).input_spec
    name, iterations, over = _set_args(source, a)
    if name.startswith("imagenet:"):
        return df.load_dataset(name, spec, data_root()).subset(a.num, a.seed), 0.0
    if name == "gaussian":
        t0 = time.time()
        return df.synthesize(model, name, df.make_config(name, num=a.num, seed=a.seed)), time.time() - t0
    data, man = cached_set(model, "efficientnet_lite0", name, a.num, iterations, a.seed, **over)
    return data, float(man.get("seconds") or 0.0)


# stage: QuantConfig fields; every stage after calibrate starts with bias correction (without it W4 collapses to ~8 %):
# on the samples' own moments (the first rows), or with `-bn`, on the model's BN statistics (`--bias-from bn`)
# activation ranges on the samples as they are, unless a stage says otherwise (the rows from before --ranges-from auto)
_SAMPLES = {"bias_correct": True, "bias_from": "samples", "ranges_from": "samples"}
_BN = {"bias_correct": True, "bias_from": "bn", "ranges_from": "samples"}
STAGES = {"calibrate": {"ranges_from": "samples"}, "bias-correct": _SAMPLES,
          "adaround": {**_SAMPLES, "reconstruct": "adaround"},
          "brecq": {**_SAMPLES, "reconstruct": "brecq"}, "brecq-alone": {"reconstruct": "brecq", "ranges_from": "samples"},
          "mixed": _SAMPLES,  # + per-layer weight bits at the uniform row's size (target_size)
          "bias-correct-bn": _BN, "brecq-bn": {**_BN, "reconstruct": "brecq"}, "mixed-bn": _BN,
          # + activation ranges observed on the BN-moved activations (--ranges-from bn)
          "bias-correct-bn-ranges": {**_BN, "ranges_from": "bn"},
          # + KD fine-tuning on the same samples: step sizes and biases, integer weights frozen (--kd-steps, --kd-lr)
          "kd-bn-ranges": {**_BN, "ranges_from": "bn", "finetune_weights": "frozen"},
          # bias-correct-bn-ranges with GPTQ rounding chosen in the bias-correction pass (--reconstruct gptq)
          "gptq-bn-ranges": {**_BN, "ranges_from": "bn", "reconstruct": "gptq"},
          # bias-correct-bn-ranges, then BRECQ (learned rounding and activation steps per block, --recon-iters)
          "brecq-bn-ranges": {**_BN, "ranges_from": "bn", "reconstruct": "brecq"},
          "kd-gptq-bn-ranges": {**_BN, "ranges_from": "bn", "reconstruct": "gptq", "finetune_weights": "frozen"},
          # GPTQ with the CLI's default ranges (--ranges-from auto: samples at 8-bit activations, bn below)
          "gptq-bn": {**_BN, "ranges_from": "auto", "reconstruct": "gptq"}}
KD_STAGES = ("kd-bn-ranges", "kd-gptq-bn-ranges")


def samples_figure(a: argparse.Namespace, path: str = "benchmarks/results/imagenet_lite0_samples.jpg") -> None:
    """Two sources' stored synthetic sets (their grid.png) side by side, 640 px each, as one JPEG."""
    from PIL import Image

    from .common import cached_set_dir

    tiles = []
    for src in a.figure:
        name, iterations, over = _set_args(src, a)
        grid = cached_set_dir("efficientnet_lite0", name, a.num, iterations, a.seed, **over) / "grid.png"
        if not grid.is_file():
            raise SystemExit(f"no stored set for {src} at seed {a.seed} ({grid}); run its rows first")
        tiles.append(Image.open(grid).convert("RGB").resize((640, 640), Image.LANCZOS))
    out = Image.new("RGB", (2 * 640 + 16, 640), "white")
    for i, t in enumerate(tiles):
        out.paste(t, (i * (640 + 16), 0))
    out.save(path, quality=80, optimize=True)
    print(f"wrote {path}")


def _uniform_bytes(model, w_bits: int) -> int:
    """Weight bytes of the uniform plan: every conv/linear at w_bits, first and last at 8 bits."""
    import torch.nn as nn

    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    return sum(m.weight.numel() * (8 if i in (0, len(layers) - 1) else w_bits) for i, m in enumerate(layers)) // 8


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bits", nargs="+", default=["w8a8"])
    p.add_argument("--sources", nargs="+", default=list(SOURCES), choices=list(SOURCES),
                   help="bn-stats-lowres: --low-res; bn-stats-fast: --low-res with --channels-last and --bf16; "
                        "bn-stats-quarter: 90 %% of the iterations at 56 px (--low-res 0.9 --low-res-scale 0.25); "
                        "fast: the FastDFKD generator, 4 rounds of 20 steps on batches of 16 (--iterations not used); "
                        "fast-x2: 40 steps per round")
    p.add_argument("--stages", nargs="+", default=["calibrate"], choices=list(STAGES),
                   help="calibrate = ranges only; bias-correct = + empirical bias correction; adaround / brecq = "
                        "bias correction + learned rounding (--recon-iters); brecq-alone = without bias correction; mixed = per-layer weight bits (ZeroQ "
                        "sensitivity on the source) at the uniform row's weight bytes, + bias correction; these on the samples' own "
                        "moments; *-bn = the same with bias correction on the model's BN statistics (--bias-from bn); "
                        "bias-correct-bn-ranges = that, with activation ranges on the BN statistics too (--ranges-from bn); "
                        "kd-bn-ranges = that, then KD fine-tuning of step sizes and biases on the same samples; "
                        "gptq-bn-ranges = bias-correct-bn-ranges with GPTQ rounding (--reconstruct gptq), "
                        "kd-gptq-bn-ranges = that, then the KD fine-tuning; gptq-bn = GPTQ with --ranges-from auto; "
                        "brecq-bn-ranges = bias-correct-bn-ranges, then BRECQ")
    p.add_argument("--num", type=int, default=64, help="calibration samples")
    p.add_argument("--iterations", type=int, default=100, help="pixel-synthesis iterations")
    p.add_argument("--low-res", type=float, default=0.75, help="low_res of the bn-stats-lowres source")
    p.add_argument("--recon-iters", type=int, help="reconstruction iterations per layer / block (default 200)")
    p.add_argument("--kd-steps", type=int, help="KD fine-tuning steps of the kd-* stages, batch 16 (default 100)")
    p.add_argument("--kd-lr", type=float, help="KD fine-tuning learning rate, Adam with a cosine schedule (default 1e-5)")
    p.add_argument("--eval-num", type=int, default=1300, help="val1300 images to evaluate on")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--out", default="benchmarks/results/imagenet_lite0.json")
    p.add_argument("--figure", nargs=2, metavar="SOURCE",
                   help="only write benchmarks/results/imagenet_lite0_samples.jpg: the stored grids of these two "
                        "sources' synthetic sets (this --seed) side by side, e.g. --figure bn-stats-lowres fast")
    a = p.parse_args(argv)
    if a.figure:
        return samples_figure(a)
    df.tune_allocator()
    torch.manual_seed(a.seed)
    meta = {"benchmark": "imagenet_lite0", "config": {k: v for k, v in vars(a).items() if k not in ("no_progress",)},
            "seed": a.seed, "commit": git_commit(), "machine": machine(),
            "command": command_line("benchmarks.imagenet", a, skip=("out", "no_progress", "bits", "sources", "stages")),
            "rows": "each row ran with this command and `--bits B --sources S --stages T` naming it (the protocol is the "
                    "rest)",
            "note": "val1300 holds 227 px squashed full frames: compare drops from the model's own FP32 here, never "
                    "absolute top-1 with published full-validation numbers"}
    store = RowStore(a.out, meta, selection=("bits", "sources", "stages"))
    model = df.load_model("efficientnet_lite0")
    val = df.load_dataset("imagenet:val1300", df.record_of(model).input_spec, data_root()).subset(a.eval_num, a.seed)
    fp_pred = predict(model, val)
    store.run({"model": "efficientnet_lite0", "w_bits": 32, "a_bits": 32, "source": "none", "stage": "fp32"},
              lambda: {"top1": round(100 * (fp_pred == val.y).float().mean().item(), 2), "agreement": 100.0})
    for bits in a.bits:
        w, act = int(bits[1]), int(bits[3])
        for src in a.sources:
            for stage in a.stages:
                def row() -> dict:
                    calib, synth_s = _calib(model, src, a)
                    iters = a.recon_iters or 200
                    cfg = QuantConfig.from_flat(w_bits=w, a_bits=act, num_calib=a.num, batch_size=16,
                                                recon_iters=iters, **STAGES[stage],
                                                **({"target_size": _uniform_bytes(model, w)} if stage.startswith("mixed") else {}))
                    kd_steps, kd_lr = a.kd_steps or 100, a.kd_lr or 1e-5
                    kd = KDConfig(steps=kd_steps, batch_size=16, lr=kd_lr, seed=a.seed) if stage in KD_STAGES else None
                    t0 = time.time()
                    q = df.quantize(model, calib, cfg, kd=kd)
                    quant_s = time.time() - t0
                    pred = predict(q, val)
                    return {"top1": round(100 * (pred == val.y).float().mean().item(), 2),
                            "agreement": round(100 * (pred == fp_pred).float().mean().item(), 2),
                            "synth_seconds": round(synth_s, 1), "quant_seconds": round(quant_s, 1),
                            "seconds": round(synth_s + quant_s, 1), "samples": len(calib),
                            **({"recon_iters": iters} if STAGES[stage].get("reconstruct") in ("adaround", "brecq") else {}),
                            **({"kd_steps": kd_steps, "kd_lr": kd_lr} if kd is not None else {}),
                            **({"avg_bits": round(df.record_of(q).reports["quantize"]["mixed"]["avg_bits"], 3),
                                "weight_bytes": _uniform_bytes(model, w)} if stage.startswith("mixed") else {})}

                r = store.run({"model": "efficientnet_lite0", "w_bits": w, "a_bits": act, "source": src,
                               "stage": stage}, row)
                print(r, flush=True)
    store.finish(complete=True)


if __name__ == "__main__":
    main()
