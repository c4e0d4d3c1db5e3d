"""Mixed precision from synthetic data (ZeroQ, Cai et al. 2020): each layer's sensitivity to b-bit weights is the KL
between the float model's outputs and those of the model with only that layer quantized, on any data source; a Pareto
search over the per-layer sums picks the bit widths under a size budget."""
from __future__ import annotations

import copy
import dataclasses
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...core.config import Config, check, opt
from ...core.errors import DatafreeError
from ...data.base import TensorData
from .layers import FLOAT_BITS
from .prepare import trace_layers, wrap_layers_

CANDIDATE_BITS = (2, 3, 4, 5, 6, 8)


@dataclasses.dataclass
class MixedConfig(Config):
    """Mixed precision: per-layer weight widths picked from each layer's sensitivity under a budget."""

    avg_bits: float = opt(0.0, "mixed precision: average weight bits over all conv/linear weights; each layer's width "
                                "(2-8) is picked from its sensitivity on the calibration source (ZeroQ's KL, Pareto "
                                "search); 0 = uniform --w-bits", cli=True)
    target_size: int = opt(0, "mixed precision: bytes of conv/linear weights to fit (instead of --avg-bits)", cli=True,
                           lo=0)

    def validate(self) -> None:
        check(self.avg_bits == 0 or 2 <= self.avg_bits <= 8, f"avg_bits must be in [2, 8], got {self.avg_bits}", "avg_bits")
        check(not (self.avg_bits and self.target_size), "give avg_bits or target_size, not both", "avg_bits")

    @property
    def on(self) -> bool:
        """Whether a budget is set."""
        return bool(self.avg_bits or self.target_size)


@torch.no_grad()
def layer_sensitivity(model: nn.Module, data: TensorData, bits: tuple[int, ...] = CANDIDATE_BITS,
                      batch_size: int = 128) -> dict[str, dict[int, float]]:
    """{layer: {bits: KL(float outputs ‖ outputs with only this layer's weights at `bits`)}} on `data`."""
    from ...core.utils import model_device
    from ...models.loading import input_spec_of

    m = copy.deepcopy(model).eval()
    example = torch.zeros((2, *input_spec_of(m).shape), device=model_device(m))
    plan = [{"name": n, "bn": bn, "w_bits": FLOAT_BITS, "a_bits": FLOAT_BITS} for n, bn in trace_layers(m, example)]
    layers = wrap_layers_(m, plan)
    dev = model_device(m)
    xs = [xb.to(dev) for xb in data.batches(batch_size)]
    ref = [F.log_softmax(m(x), 1) for x in xs]
    out: dict[str, dict[int, float]] = {}
    for entry, q in zip(plan, layers):
        out[entry["name"]] = {}
        w = q.weight.detach().clone()
        for b in bits:
            q.w_bits = b
            q.set_weight_scales()
            kl = sum(F.kl_div(F.log_softmax(m(x), 1), r, log_target=True, reduction="sum").item() for x, r in zip(xs, ref))
            out[entry["name"]][b] = kl / len(data)
        q.w_bits = FLOAT_BITS
        q.weight.data.copy_(w)
    return out


def pareto_bits(sens: dict[str, dict[int, float]], params: dict[str, int], budget_bits: float,
                resolution: int = 4000) -> dict[str, int]:
    """Bits per layer minimizing the summed sensitivity with Σ params·bits <= budget_bits: the Pareto frontier over
    (size, sensitivity), built layer by layer with sizes bucketed at budget/resolution (dominated plans dropped)."""
    grain = max(budget_bits / resolution, 1e-9)
    names = list(sens)
    fronts: list[list[tuple[float, float, int, int]]] = []  # per layer: (size, cost, parent index, bits)
    prev: list[tuple[float, float, int, int]] = [(0.0, 0.0, -1, 0)]
    for name in names:
        cand: dict[int, tuple[float, float, int, int]] = {}
        for pi, (sz, c, _, _) in enumerate(prev):
            for b, kl in sens[name].items():
                s2 = sz + params[name] * b
                if s2 > budget_bits:
                    continue
                k = int(s2 / grain)
                t = (s2, c + kl, pi, b)
                if k not in cand or t[1] < cand[k][1]:
                    cand[k] = t
        if not cand:
            lo = sum(params[n] * min(sens[n]) for n in names)
            raise DatafreeError(f"a budget of {budget_bits / 8:.0f} bytes of weights is below the smallest plan "
                                f"({lo / 8:.0f} bytes at {min(min(v) for v in sens.values())} bits everywhere)")
        front, best = [], float("inf")
        for _, t in sorted(cand.items()):
            if t[1] < best:  # a larger plan must be strictly better to stay
                front.append(t)
                best = t[1]
        fronts.append(front)
        prev = front
    i = min(range(len(prev)), key=lambda k: prev[k][1])
    choice: dict[str, int] = {}
    for layer in range(len(names) - 1, -1, -1):
        sz, c, pi, b = fronts[layer][i]
        choice[names[layer]] = b
        i = pi
    return choice


def plan_table(plan: list[dict], sens: Optional[dict[str, dict[int, float]]] = None, params: Optional[dict[str, int]] = None) -> str:
    """The per-layer plan as a text table (layer, parameters, weight bits, activation bits, sensitivity at those bits)."""
    rows = ["layer                              params  w_bits  a_bits  KL at w_bits", "-" * 70]
    for e in plan:
        kl = f"{sens[e['name']][e['w_bits']]:.5f}" if sens and e["w_bits"] in sens.get(e["name"], {}) else "-"
        n = params.get(e["name"], 0) if params else 0
        rows.append(f"{e['name']:32s} {n:8d}  {e['w_bits']:6d}  {e['a_bits']:6d}  {kl}")
    return "\n".join(rows)


def weight_params(model: nn.Module, names: list[str]) -> dict[str, int]:
    """Weight count of each named conv/linear layer."""
    return {n: int(model.get_submodule(n).weight.numel()) for n in names}


def mixed_plan_(plan: list[dict], model: nn.Module, data: TensorData, avg_bits: float = 0.0, target_size: int = 0,
                bits: tuple[int, ...] = CANDIDATE_BITS) -> dict:
    """Set each plan entry's w_bits from the sensitivity on `data` under the budget (average bits per weight, or bytes
    of conv/linear weights); in place. Returns {sensitivity, params, budget_bits}."""
    names = [e["name"] for e in plan]
    params = weight_params(model, names)
    total = sum(params.values())
    budget = avg_bits * total if avg_bits else target_size * 8.0
    if budget <= 0:
        raise DatafreeError("mixed precision needs --avg-bits or --target-size")
    sens = layer_sensitivity(model, data, bits)
    choice = pareto_bits(sens, params, budget)
    for e in plan:
        e["w_bits"] = int(choice[e["name"]])
    return {"sensitivity": sens, "params": params, "budget_bits": budget,
            "avg_bits": sum(params[n] * choice[n] for n in names) / total}


def uniform_weight_bytes(model: nn.Module, bits: int) -> int:
    """Bytes of all conv/linear weights at `bits` (the size a uniform plan has)."""
    return int(sum(m.weight.numel() for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))) * bits // 8)


__all__ = ["layer_sensitivity", "pareto_bits", "mixed_plan_", "plan_table", "uniform_weight_bytes"]
