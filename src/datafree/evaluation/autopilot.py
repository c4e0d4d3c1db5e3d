"""Bit-width autopilot: the smallest quantized model whose estimated top-1 drop (held-out synthetic samples) is within a
budget — uniform widths first (then the passing width on the first and last layer too), then GPTQ rounding of the
failing uniform widths (largest first, while it passes) and, where GPTQ fails on the largest, per-layer mixed precision
between the two uniform widths around the budget and (where reconstruction is allowed) BRECQ."""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Optional

import torch.nn as nn

from ..core.errors import DatafreeError
from ..data.base import TensorData
from ..models.measure import model_size_bits
from .estimate import estimate_drop

UNIFORM = ((4, 4), (4, 8), (5, 8), (6, 8), (8, 8))  # tried smallest first (weight bits, then activation bits)
MIXED_FRACTIONS = (1 / 3, 2 / 3)  # mixed-precision sizes tried between the failing and the passing uniform width


@dataclasses.dataclass
class Trial:
    """One configuration the autopilot tried."""

    label: str
    size_bytes: int
    estimate: dict[str, Any]
    seconds: float
    weight_bytes: int = 0  # conv/linear weights at their widths (what a mixed-precision target counts)
    bits: Optional[tuple[int, int]] = None  # (weight, activation) bits of a uniform trial; None for mixed precision
    every_layer: bool = False  # a uniform trial with the first and last layer at its width too
    model: Optional[nn.Module] = dataclasses.field(default=None, repr=False)

    def row(self) -> dict[str, Any]:
        """The trial as a table row / JSON object."""
        return {"config": self.label, "size_bytes": self.size_bytes, "estimated_drop": self.estimate["drop"],
                "interval": [self.estimate["lo"], self.estimate["hi"]], "seconds": round(self.seconds, 2)}


def autopilot(model: nn.Module, calib: TensorData, max_drop: float, config: Any, held: TensorData,
              recon: bool = True, progress: bool = False, log: Callable[[str], None] = lambda s: None,
              seed: int = 0) -> tuple[Trial, list[Trial]]:
    """Search quantization configurations of `model` (calibrated on `calib`, `config` giving everything but the widths)
    and return the smallest whose estimated drop on `held` is <= `max_drop`, with every trial."""
    from ..compressors.quant import quantize
    from ..compressors.quant.layers import quant_layers

    if not max_drop >= 0:
        raise DatafreeError(f"--max-drop must be >= 0 points, got {max_drop}")
    trials: list[Trial] = []

    def attempt(label: str, bits: Optional[tuple[int, int]] = None, every: bool = False, **over: Any) -> Trial:
        t0 = time.time()
        qm = quantize(model, calib, config.replace(**over), progress=progress).eval()
        est = estimate_drop(model, qm, held=held, seed=seed)
        wbytes = sum(q.weight.numel() * q.w_bits for q in quant_layers(qm)) // 8
        t = Trial(label, model_size_bits(qm) // 8, est, time.time() - t0, wbytes, bits, every, qm)
        trials.append(t)
        log(f"  {label:38s} {t.size_bytes / 1024:9.1f} KiB  estimated drop {est['drop']:5.2f} pt "
            f"({est['lo']:.2f}-{est['hi']:.2f})  {t.seconds:6.1f} s")
        return t

    def uniform(w: int, a: int, every: bool = False, **extra: Any) -> Trial:
        label = (f"W{w}A{a}" + ("+bias-correct" if w < 8 else "") + ("+" + extra["reconstruct"] if extra else "")
                 + (", every layer" if every else ""))
        return attempt(label, (w, a), every, w_bits=w, a_bits=a, bias_correct=w < 8,
                       quantize_first_last=every or config.quantize_first_last, avg_bits=0.0, target_size=0, **extra)

    def ok(t: Trial) -> bool:
        return t.estimate["drop"] <= max_drop

    passing = next((t for t in (uniform(w, a) for w, a in UNIFORM) if ok(t)), None)  # stops at the first passing
    if passing is None:
        raise DatafreeError(f"no configuration up to W8A8 is estimated within --max-drop {max_drop:g} pt (W8A8: "
                            f"{trials[-1].estimate['drop']:.2f} pt); raise --max-drop or use better calibration data")
    if passing.bits[0] < 8 and not config.quantize_first_last:  # uniform trials so far: bits are set
        uniform(*passing.bits, every=True)  # first and last layer too: a little smaller
    passing = min((t for t in trials if ok(t)), key=lambda t: t.size_bytes)
    smaller = [t for t in trials if t.size_bytes < passing.size_bytes and not ok(t)]
    if smaller:  # failing configurations below the passing one: GPTQ, then mixed precision in between, then BRECQ
        # GPTQ rounding first, on the failing uniform widths from the largest down while it passes: one pass, seconds
        # even at 224 px, and a passing failing width is smaller than any mixed plan above it
        smaller.sort(key=lambda t: (*t.bits, not t.every_layer), reverse=True)  # widest first
        failing = smaller[0]
        if ok(uniform(*failing.bits, every=failing.every_layer, reconstruct="gptq")):
            for low in smaller[1:]:
                if not ok(uniform(*low.bits, every=low.every_layer, reconstruct="gptq")):
                    break
        else:
            (fw, fa), (pw, pa) = failing.bits, passing.bits
            if fw < pw:  # sizes between two weight widths
                for frac in MIXED_FRACTIONS:
                    target = int(failing.weight_bytes + frac * (passing.weight_bytes - failing.weight_bytes))
                    t = attempt(f"mixed (weights {target / 1024:.0f} KiB) A{max(fa, pa)}", a_bits=max(fa, pa),
                                w_bits=8, bias_correct=True, target_size=target, avg_bits=0.0)
                    if ok(t):
                        break
            if recon:  # BRECQ (minutes) only where GPTQ failed
                uniform(fw, fa, every=failing.every_layer, reconstruct="brecq")
    best = min((t for t in trials if ok(t)), key=lambda t: (t.size_bytes, t.estimate["drop"]))
    for t in trials:  # only the chosen model is kept
        if t is not best:
            t.model = None
    return best, trials


def trials_table(trials: list[Trial], best: Trial, max_drop: float) -> str:
    """The autopilot's trials as a text table, the chosen one marked."""
    lines = [f"{'':2s}{'configuration':38s}{'size':>11s}{'estimated drop':>16s}{'interval':>14s}{'seconds':>9s}"]
    for t in trials:
        e = t.estimate
        mark = "*" if t is best else ("" if e["drop"] <= max_drop else "x")
        lines.append(f"{mark:2s}{t.label:38s}{t.size_bytes / 1024:8.1f} KiB{e['drop']:13.2f} pt"
                     f"{e['lo']:7.2f}-{e['hi']:<6.2f}{t.seconds:9.1f}")
    return "\n".join(lines)


__all__ = ["autopilot", "trials_table", "Trial"]
