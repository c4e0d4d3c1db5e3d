"""Reconstruction PTQ on any data source: AdaRound (Nagel et al. 2020; learned up/down rounding per weight, layer by
layer) and BRECQ (Li et al. 2021; the same rounding learned jointly over a block, against the block's output). Blocks
come from tracing the model (torch.fx), so user models work: a block is the group of quantized layers under one
submodule (at most `block_size` of them, e.g. a residual block), with every op between them.

Sketch of BRECQ where the paper's details go further: plain MSE on the block output (no Fisher weighting). Activation
step sizes stay as calibrated unless `learn_act` (the CLI's --recon-act): then the step sizes of the quantizers inside
the layer/block are learned with the rounding in the same pass (LSQ-style, as QDrop does; Adam's rate relative to each
step size; per block the learned step sizes are kept only if they beat the calibrated ones; BRECQ's own code learns them
in a second pass after the weights).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...core.config import Config, opt
from ...core.errors import DatafreeError
from ...data.base import TensorData
from .graph import TensorQuant, act_quantizers, float_twin
from .layers import FLOAT_BITS, QuantLayer, as_buffer_, as_parameter_, quant_layers
from .quantizer import WeightRounding, signed_range

ZETA, GAMMA = 1.1, -0.1  # the rectified sigmoid's stretch (AdaRound)


@dataclasses.dataclass
class ReconConfig(Config):
    """Reconstruction after calibration: learned rounding per layer (AdaRound) or block (BRECQ)."""

    method: str = opt("none", "reconstruction PTQ after calibration: adaround = learned up/down rounding per layer "
                              "(Nagel et al. 2020), brecq = the same learned per block against the block output "
                              "(Li et al. 2021; sketch: plain MSE on the block output, no Fisher weighting), gptq = "
                              "rounding column by column with the error spread through the inverse second moments of "
                              "each layer's input (Frantar et al. 2023; one pass, no iterations, in the bias-correction "
                              "pass)", cli=True,
                      choices=("none", "adaround", "brecq", "gptq"), label="reconstruct")
    iters: int = opt(500, "reconstruction iterations per layer (adaround) or block (brecq)", cli=True, lo=1,
                     label="recon_iters")
    lr: float = opt(1e-2, "Adam learning rate of the rounding variables during reconstruction", cli=True, lo=0,
                    lo_open=True, label="recon_lr")
    act: bool = opt(True, "reconstruction also learns the activation step sizes inside each layer/block (LSQ-style, "
                          "jointly with the rounding as in QDrop; BRECQ learns them in a second pass)", cli=True,
                    label="recon_act")
    act_lr: float = opt(2e-2, "Adam learning rate of the activation step sizes with --recon-act, relative to each step "
                              "size", cli=True, lo=0, lo_open=True, label="recon_act_lr")
    drop: float = opt(0.0, "QDrop (Wei et al. 2022; the paper uses 0.5): while reconstruction learns, each activation "
                           "inside the layer/block is left unquantized with this probability; 0 = off", cli=True,
                      lo=0.0, hi=1.0, hi_open=True, label="recon_drop")
    round_weight: float = opt(0.01, "weight of the rounding regularizer (pushes each weight to up or down)", cli=True,
                              lo=0.0)
    round_norm: str = opt("sum", "scale of the reconstruction loss: sum = the AdaRound/BRECQ reference code's (squared "
                                 "error summed over output channels, mean over samples and positions, + --round-weight x "
                                 "the regularizer summed over weights); mean = output MSE + --round-weight x the mean "
                                 "regularizer per weight (before 2026-12: 100-1000x weaker rounding pressure, 10-20 pt "
                                 "lower at W2A4)", cli=True, choices=("sum", "mean"))
    damp: float = opt(0.01, "gptq: damping added to each layer's input second moments, x their mean diagonal",
                      cli=True, lo=0.0, label="gptq_damp")
    block_size: int = opt(4, "brecq: at most this many quantized layers per block (the submodule that groups them)",
                          cli=True, lo=1)


class AdaRoundRounding(WeightRounding):
    """floor(w/s) + h(V), h a rectified sigmoid in [0, 1] initialized to the fractional part of w/s; `hard` rounds up
    exactly where h(V) >= 0.5."""

    def __init__(self, w_over_s: torch.Tensor) -> None:
        super().__init__()
        rest = (w_over_s - torch.floor(w_over_s)).clamp(0.01, 0.99)
        self.V = nn.Parameter(-torch.log((ZETA - GAMMA) / (rest - GAMMA) - 1))
        self.hard = False

    def h(self) -> torch.Tensor:
        """The soft rounding offset in [0, 1]."""
        return torch.clamp(torch.sigmoid(self.V) * (ZETA - GAMMA) + GAMMA, 0, 1)

    def forward(self, w_over_s: torch.Tensor) -> torch.Tensor:
        up = (self.h() >= 0.5).to(w_over_s.dtype) if self.hard else self.h()
        return torch.floor(w_over_s).detach() + up

    def regularizer(self, beta: float) -> torch.Tensor:
        """Σ 1 − |2h − 1|^β: pushes every h to 0 or 1 as β anneals down."""
        return (1 - (2 * self.h() - 1).abs().pow(beta)).sum()


def _tracer_view(model: nn.Module):
    """A torch.fx GraphModule over the model's own submodules (the model itself when it is one)."""
    import torch.fx as fx

    from .graph import _Tracer

    if isinstance(model, fx.GraphModule):
        return model
    try:
        return fx.GraphModule(model, _Tracer.trace(model))
    except Exception as e:
        raise DatafreeError(f"reconstruction needs a model torch.fx can trace ({type(e).__name__}); use "
                            "--reconstruct none") from None


def find_blocks(model: nn.Module, block_size: int = 4) -> list[list[str]]:
    """Names of the quantized layers of each block, in execution order: the shallowest submodule (below the root)
    holding at most `block_size` quantized layers groups them; a layer directly under the root is its own block."""
    gm = _tracer_view(model)
    order = [n.target for n in gm.graph.nodes if n.op == "call_module" and isinstance(gm.get_submodule(n.target), QuantLayer)]
    blocks: list[list[str]] = []
    key_of = {}
    for name in order:
        parts = name.split(".")
        key = name
        for depth in range(1, len(parts)):
            prefix = ".".join(parts[:depth])
            if sum(1 for o in order if o.startswith(prefix + ".")) <= block_size:
                key = prefix
                break
        key_of[name] = key
    for name in order:
        if blocks and key_of[blocks[-1][-1]] == key_of[name]:
            blocks[-1].append(name)
        else:
            blocks.append([name])
    return blocks


def _regions(gm, blocks: list[list[str]]) -> list[tuple[list, list, Any]]:
    """Per block: (nodes of its region, external input nodes, output node). A region runs from the block's first
    quantized layer to the node before the next block's first one."""
    nodes = list(gm.graph.nodes)
    index = {n: i for i, n in enumerate(nodes)}
    firsts = [next(n for n in nodes if n.op == "call_module" and n.target == b[0]) for b in blocks]
    out = []
    for k, first in enumerate(firsts):
        end = index[firsts[k + 1]] if k + 1 < len(firsts) else next(i for i, n in enumerate(nodes) if n.op == "output")
        region = [n for n in nodes[index[first]:end] if n.op not in ("placeholder", "output")]
        region = _with_shape_queries(region, index)
        inside = set(region)
        ext = []
        for n in region:
            for a in n.all_input_nodes:
                if a not in inside and a not in ext and a.op != "get_attr":
                    ext.append(a)
        out.append((region, ext, region[-1]))
    return out


def _is_shape_query(n: Any) -> bool:
    """A node that reads a tensor's shape (x.size(0), x.shape, x.dim()): its value is a number, not a tensor."""
    import operator

    return (n.op == "call_method" and n.target in ("size", "dim")) or \
        (n.op == "call_function" and n.target in (getattr, operator.getitem, torch.numel) and
         (n.target is not getattr or n.args[1] in ("shape", "ndim")) and
         (n.target is not operator.getitem or _is_shape_query(n.args[0])))


def _with_shape_queries(region: list, index: dict) -> list:
    """The region with the shape queries it reads pulled in (recomputed from the captured tensors): a batch size read
    before the region must follow the reconstruction batch, not the capture's."""
    inside = set(region)
    todo = [a for n in region for a in n.all_input_nodes if a not in inside]
    while todo:
        a = todo.pop()
        if a not in inside and _is_shape_query(a):
            inside.add(a)
            todo.extend(x for x in a.all_input_nodes if x not in inside)
    return sorted(inside, key=index.__getitem__)


def _subgraph(gm, region: list, inputs: list, output: Any):
    """The region as its own GraphModule over the same submodules: inputs -> output."""
    import torch.fx as fx

    g = fx.Graph()
    env = {}
    for i, n in enumerate(inputs):
        env[n] = g.placeholder(f"in{i}")
    for n in region:
        for a in n.all_input_nodes:
            if a not in env and a.op == "get_attr":
                env[a] = g.node_copy(a, lambda x: env[x])
        env[n] = g.node_copy(n, lambda x: env[x])
    g.output(env[output])
    return fx.GraphModule(gm, g)


class _Enough(Exception):
    """Every value a capture needs is in: the rest of the model need not run."""


class _Capture:
    """Runs a GraphModule and keeps the values of some nodes (inputs and output of a region) on every batch, stopping
    each pass at the last of them."""

    def __init__(self, gm, names: list[str]) -> None:
        import torch.fx as fx

        keep = set(names)
        last = next((n for n in reversed(gm.graph.nodes) if n.name in keep), None)
        store: dict[str, list[torch.Tensor]] = {n: [] for n in names}

        class I(fx.Interpreter):
            def run_node(self, n):
                v = super().run_node(n)
                if n.name in keep:
                    store[n.name].append(v.detach())
                if n is last:
                    raise _Enough
                return v

        self.interp, self.store = I(gm), store

    @torch.no_grad()
    def run(self, data: TensorData, batch_size: int) -> dict[str, torch.Tensor]:
        dev = next(self.interp.module.parameters()).device
        for xb in data.batches(batch_size):
            try:
                self.interp.run(xb.to(dev))
            except _Enough:
                pass
        return {k: torch.cat(v) for k, v in self.store.items()}


def bake_rounding_(q: QuantLayer) -> None:
    """Put the learned rounding into the weights (on the b-bit grid) and return to round-to-nearest."""
    r = q.rounding
    if not isinstance(r, AdaRoundRounding):
        return
    r.hard = True
    q.bake_rounding()


def reconstruct_(qmodel: nn.Module, data: TensorData, mode: str = "brecq", iters: int = 500, round_weight: float = 0.01,
                 block_size: int = 4, batch_size: int = 32, lr: float = 1e-2, seed: int = 0,
                 on_block: Optional[Callable[[dict], None]] = None, learn_act: bool = False,
                 act_lr: float = 2e-2, round_norm: str = "sum", drop: float = 0.0) -> list[dict]:
    """Learn each weight's rounding (AdaRound: per layer; BRECQ: per block), and with `learn_act` the activation step
    sizes inside it, so that the quantized layer/block output matches the float one on `data`; blocks in order, each
    seeing the already-reconstructed blocks before it. In place; returns per block {layers, mse_before, mse_after}, with
    `learn_act` also mse_learned_steps, mse_calibrated_steps, learned_steps, calibrated_steps and act_steps (which of
    the two step sets was kept). `round_norm` scales the loss: sum = the reference code's scale, squared error summed over
    output channels (mean over samples and positions) + round_weight x regularizer summed over weights; mean = output
    MSE + round_weight x mean regularizer per weight. `drop` > 0 (QDrop): while learning, each activation inside the
    layer/block is left unquantized with that probability (the errors are measured without dropping)."""
    if mode not in ("adaround", "brecq"):
        raise DatafreeError(f"unknown reconstruction {mode!r}; use adaround or brecq")
    ReconConfig(method=mode, iters=iters, lr=lr, act=learn_act, act_lr=act_lr, drop=drop, round_weight=round_weight,
                round_norm=round_norm, block_size=block_size)  # the config's declared checks
    if batch_size < 1:
        raise DatafreeError(f"reconstruction needs a batch size >= 1, got {batch_size}")
    recipe = _Recipe(iters, round_weight, batch_size, lr, learn_act, act_lr, round_norm, drop)
    was = qmodel.training
    qmodel.eval()
    gm_q = _tracer_view(qmodel)
    twin = float_twin(qmodel).eval()
    gm_f = _tracer_view(twin)
    blocks = [[n] for b in find_blocks(qmodel, block_size) for n in b] if mode == "adaround" else find_blocks(qmodel, block_size)
    regions_q, regions_f = _regions(gm_q, blocks), _regions(gm_f, blocks)
    g = torch.Generator().manual_seed(seed)
    report = []
    try:
        for names, (reg, ins, out), (_, _, out_f) in zip(blocks, regions_q, regions_f):
            layers = [gm_q.get_submodule(n) for n in names]
            if not any(q.w_bits < FLOAT_BITS for q in layers):
                continue
            xs = _Capture(gm_q, [n.name for n in ins]).run(data, 128)
            target = _Capture(gm_f, [out_f.name]).run(data, 128)[out_f.name]
            rec = _reconstruct_block(_subgraph(gm_q, reg, ins, out), layers, [xs[i.name] for i in ins], target,
                                     recipe, g)
            report.append({"layers": names, **rec})
            if on_block is not None:
                on_block(report[-1])
    finally:
        for m in qmodel.modules():  # an interrupted block leaves no dropping behind
            if "qdrop" in vars(m):
                del m.qdrop
        for q in quant_layers(qmodel):
            if isinstance(q.rounding, AdaRoundRounding):
                bake_rounding_(q)
        qmodel.train(was)
    return report


@dataclasses.dataclass(frozen=True)
class _Recipe:
    """How one layer or block is reconstructed (see `reconstruct_`)."""

    iters: int
    round_weight: float
    batch_size: int
    lr: float
    learn_act: bool
    act_lr: float
    round_norm: str
    drop: float


def _block_error(sub: nn.Module, inputs: list[torch.Tensor], target: torch.Tensor) -> float:
    """Mean squared error of the region's output against the float target, over all samples."""
    with torch.no_grad():
        tot = 0.0
        for k in range(0, len(target), 128):
            tot += F.mse_loss(sub(*[x[k:k + 128] for x in inputs]), target[k:k + 128], reduction="sum").item()
        return tot / target.numel()


def _reconstruct_block(sub: nn.Module, layers: list[nn.Module], inputs: list[torch.Tensor], target: torch.Tensor,
                       recipe: _Recipe, g: torch.Generator) -> dict[str, Any]:
    """Learn the rounding (and optionally the activation steps) of one region's layers; bake the result in."""
    roundings = []
    for q in layers:
        if q.w_bits >= FLOAT_BITS:
            continue
        s = q.w_scale.detach().view(-1, *[1] * (q.weight.dim() - 1))
        r = AdaRoundRounding((q.weight.detach() / s)).to(q.weight.device)
        q.set_rounding(r)
        roundings.append(r)
    frozen = [(p, p.requires_grad) for p in sub.parameters()]
    for p, _ in frozen:
        p.requires_grad_(False)
    for r in roundings:
        r.V.requires_grad_(True)
    steps = _act_steps(sub) if recipe.learn_act else []
    calibrated = [m.a_scale.detach().clone() for m in steps]
    for r in roundings:
        r.hard = True
    before = _block_error(sub, inputs, target)  # round-to-nearest start (h initialized to the fractional part)
    for r in roundings:
        r.hard = False
    _learn(sub, inputs, target, roundings, steps, recipe, g)
    for r in roundings:
        r.hard = True
    for m in steps:  # back to a calibrated buffer: the next block and the artifact see a plain step size
        as_buffer_(m, "a_scale")
    after = _block_error(sub, inputs, target)
    rec: dict[str, Any] = {"mse_before": before}
    if steps:  # keep the learned step sizes only where they beat the calibrated ones with the learned rounding
        learned = [m.a_scale.clone() for m in steps]
        for m, c in zip(steps, calibrated):
            m.a_scale.copy_(c)
        kept = _block_error(sub, inputs, target)
        rec.update(mse_learned_steps=after, mse_calibrated_steps=kept,
                   learned_steps=[float(t) for t in learned], calibrated_steps=[float(c) for c in calibrated])
        if kept < after:
            after, rec["act_steps"] = kept, "calibrated"
        else:
            for m, t in zip(steps, learned):
                m.a_scale.copy_(t)
            rec["act_steps"] = "learned"
    for q in layers:
        bake_rounding_(q)
    for p, rg in frozen:
        p.requires_grad_(rg)
    rec["mse_after"] = after
    return rec


def _learn(sub: nn.Module, inputs: list[torch.Tensor], target: torch.Tensor, roundings: list[AdaRoundRounding],
           steps: list[nn.Module], recipe: _Recipe, g: torch.Generator) -> None:
    """Adam on the rounding variables (and step sizes): output error + annealed rounding regularizer, QDrop if set."""
    n, iters = len(target), recipe.iters
    groups = [{"params": [r.V for r in roundings], "lr": recipe.lr}]
    # each step size moves at a rate relative to itself: steps of one model differ by 10x and more
    groups += [{"params": [m.a_scale], "lr": recipe.act_lr * float(m.a_scale.detach())} for m in steps]
    opt = torch.optim.Adam(groups)
    warm = int(0.2 * iters)
    droppers = [m for m in sub.modules() if isinstance(m, (QuantLayer, TensorQuant))] if recipe.drop > 0 else []
    for m in droppers:
        m.qdrop = (recipe.drop, g)
    reg_norm = sum(r.V.numel() for r in roundings) if recipe.round_norm == "mean" else 1  # per weight, or summed
    for it in range(iters):
        idx = torch.randint(0, n, (min(recipe.batch_size, n),), generator=g)
        d2 = (sub(*[x[idx] for x in inputs]) - target[idx]).pow(2)
        loss = d2.mean() if recipe.round_norm == "mean" else d2.sum(1).mean()
        if it >= warm and recipe.round_weight > 0:
            beta = 20 + (2 - 20) * (it - warm) / max(1, iters - warm)  # annealed 20 -> 2
            loss = loss + recipe.round_weight * (sum(r.regularizer(beta) for r in roundings) / reg_norm)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        for m in steps:
            m.a_scale.data.clamp_(min=1e-8)
    for m in droppers:
        del m.qdrop  # back to the class default: no dropping


def _act_steps(sub: nn.Module) -> list[nn.Module]:
    """The activation quantizers inside a layer/block with a live sub-float grid, their step size made trainable."""
    out = []
    for m in act_quantizers(sub):
        if getattr(m, "act_quant", False) and m.a_bits < FLOAT_BITS:
            as_parameter_(m, "a_scale").requires_grad_(True)
            out.append(m)
    return out


def rounding_is_valid(before: torch.Tensor, after: torch.Tensor, scale: torch.Tensor, bits: int) -> bool:
    """Every weight of `after` sits on the b-bit grid at floor or ceil of before/scale (within the grid's range)."""
    s = scale.view(-1, *[1] * (before.dim() - 1))
    k = after / s
    qmin, qmax = signed_range(bits)
    on_grid = torch.allclose(k, k.round(), atol=1e-3)
    lo = torch.clamp(torch.floor(before / s), qmin, qmax)
    hi = torch.clamp(torch.floor(before / s) + 1, qmin, qmax)
    kk = k.round()
    return bool(on_grid and ((kk == lo) | (kk == hi)).all() and math.isfinite(float(k.abs().max())))
