"""The results-at-a-glance table (README.md) and BENCHMARKS.md's summary, rendered from the result files."""
from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path("benchmarks/results")
SOURCE_NAMES = {"cifar10:train-exact": "real (512 train images)", "bn-stats": "bn-stats (own BN statistics)",
                "mixmix": "mixmix (pool of 4 teachers)"}


def _synthesis_seconds() -> dict[tuple[str, str], float]:
    """Recorded synthesis time of 512 samples per (model, method) (ptq_cifar.json)."""
    f = RESULTS / "ptq_cifar.json"
    if not f.is_file():
        return {}
    rows = json.loads(f.read_text())["rows"]
    return {(r["model"], r["method"]): r["seconds"] for r in rows if r.get("kind") == "synthesis"}


def best_rows() -> tuple[dict[str, dict], list[dict]]:
    """FP32 rows per model, and the best stage per (model, bits, source) of lowbit.json (test-exact)."""
    d = json.loads((RESULTS / "lowbit.json").read_text())
    fp = {r["model"]: r for r in d["rows"] if r["stage"] == "fp32"}
    best: dict[tuple, dict] = {}
    for r in d["rows"]:
        if r["stage"] in ("fp32", "mixed"):
            continue
        k = (r["model"], r["w_bits"], r["a_bits"], r["source"])
        if k not in best or r["top1_exact"] > best[k]["top1_exact"]:
            best[k] = r
    return fp, [best[k] for k in sorted(best, key=lambda k: (k[0], -k[1], -k[2], k[3]))]


def glance_table() -> str:
    """Markdown: model x bits x source -> top-1 (test-exact), drop from FP32, best stage, seconds."""
    fp, rows = best_rows()
    synth = _synthesis_seconds()
    out = ["| model | bits | samples | top-1 (drop from FP32) | best stage | seconds (+ synthesis) |", "|---|---|---|---|---|---|"]
    for r in rows:
        f = fp[r["model"]]["top1_exact"]
        s = synth.get((r["model"], r["source"]))
        cost = f"{r['seconds']:.0f}" + (f" (+{s:.0f})" if s else "")
        out.append(f"| {r['model']} ({f:.1f}) | W{r['w_bits']}A{r['a_bits']} | {SOURCE_NAMES.get(r['source'], r['source'])} "
                   f"| {r['top1_exact']:.1f} ({r['top1_exact'] - f:+.1f}) | {r['stage']} | {cost} |")
    meta = json.loads((RESULTS / "lowbit.json").read_text())["meta"]
    out.append(f"\nCIFAR-10, 1000 exact test images; every layer quantized; {meta['config']['num']} samples per source; "
               f"commit {meta['commit'][:7]}, {meta['machine'].get('cpu', 'CPU') if isinstance(meta['machine'], dict) else meta['machine']}. "
               f"Seconds: the compression on 2 cores; synthesis: the recorded time of 512 samples of that method "
               f"(`ptq_cifar.json`; the mixmix pool's sets are cached chunks). Command: `{meta['command']}`; all stages and "
               "the JPEG test set: [BENCHMARKS.md](BENCHMARKS.md).")
    return "\n".join(out)


def replace_block(text: str, name: str, body: str) -> str:
    """`text` with the lines between `<!-- name:start -->` and `<!-- name:end -->` replaced by `body`."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    i, j = text.index(start) + len(start), text.index(end)
    return text[:i] + "\n" + body.strip() + "\n" + text[j:]


def imagenet_glance() -> str:
    """Markdown: EfficientNet-Lite0 per bit width and source -> the best stage's top-1 on val1300 (drop), seconds."""
    f = RESULTS / "imagenet_lite0.json"
    d = json.loads(f.read_text())
    fp = next(r for r in d["rows"] if r["stage"] == "fp32")
    best: dict[tuple, dict] = {}
    for r in d["rows"]:
        k = (r["w_bits"], r["a_bits"], r["source"])
        if r["stage"] != "fp32" and (k not in best or r["top1"] > best[k]["top1"]):
            best[k] = r
    out = ["| model | bits | samples | top-1 (drop from FP32) | best stage | seconds (synthesis + quantization) |",
           "|---|---|---|---|---|---|"]
    for k in sorted(best, key=lambda k: (-k[0], -k[1], k[2])):
        r = best[k]
        out.append(f"| efficientnet_lite0 ({fp['top1']:.1f}) | W{k[0]}A{k[1]} | {k[2]} ({r['samples']}) | "
                   f"{r['top1']:.1f} ({r['top1'] - fp['top1']:+.1f}) | {r['stage']} | "
                   f"{r.get('synth_seconds', 0):.0f} + {r.get('quant_seconds', 0):.0f} |")
    out.append(f"\nImageNet, the 1300 real validation images of `imagenet:val1300`; uniform rows keep first and last layer at 8 bits; stage "
               f"`mixed` = per-layer weight bits (ZeroQ sensitivity on the samples) in the uniform row's weight bytes; `*-bn` = bias correction on the model's BN statistics (`--bias-from bn`, the default); `kd-bn-ranges` = that with ranges on the BN statistics, then KD fine-tuning of step sizes and biases; "
               f"`{f.name}`, `python -m benchmarks.imagenet` (rows: BENCHMARKS.md \"Real scale\"). Seed 0 only; the "
               "`gptq-*` rows predate GPTQ's taking the package's own padding into its input moments (commit 14109d0): "
               "three seeds before and after, each change within its noise, under \"GPTQ over the padded patches\" there.")
    return "\n".join(out)
