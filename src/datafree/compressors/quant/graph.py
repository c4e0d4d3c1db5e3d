"""The fused integer layout: one quantizer per activation tensor, as onnxruntime's integer kernels need it.

A QuantLayer quantizes its own input. That is enough for a chain of convolutions, but a residual add reads tensors
that no QuantLayer quantizes (a conv output, the shortcut), and its output is read by several consumers. onnxruntime
turns DequantizeLinear → Conv/Add → QuantizeLinear into integer kernels only when every such tensor is quantized once.
`apply_layout(model, "fused")` traces the model with torch.fx and inserts TensorQuant nodes so that:

- a tensor read by a QuantLayer and by anything else is quantized once, with that QuantLayer's (scale, zero), and all
  its readers see the quantized tensor (so the shortcut sees what the convolution sees); when that QuantLayer is
  below 8 bits the tensor gets its own 8-bit range instead and the QuantLayer requantizes it to its b-bit grid
  (sharing the coarse b-bit step with a residual stream cost up to 6 pt top-1 on ResNet-56 W4A4);
- every operand of an add is quantized: with the parameters of a quantized tensor it was sliced or padded from
  (exact), else with its own calibrated 8-bit range;
- the output of an add (after its ReLU) is quantized: by the QuantLayer that reads it, else with its own 8-bit range;
- a tensor flattened into a QuantLayer is quantized before the flatten too, and an average pooling feeding a
  quantized tensor has its input quantized (pooling on integers);
- biases are rounded to the int32 grid of step input scale · weight scale.

Files made before that rule (no `sub8_own_range` in their record) shared the sub-8-bit QuantLayer's step on the full
uint8 range and are rebuilt that way. The simulation is the integer graph, up to float rounding.
"""
from __future__ import annotations

import operator
from typing import Any, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...core.errors import DatafreeError
from ...core.utils import eval_modes
from ...models.record import RECORD_ATTR
from .layers import FLOAT_BITS, QuantLayer, quant_layers
from .quantizer import act_qparams, drop_quant, fake_quant, unsigned_range

LAYOUTS = ("fused", "inputs")
_ADDS = {operator.add, operator.iadd, torch.add}
_RELUS = {F.relu, torch.relu}
# ops that move or pad values without changing them: a quantized tensor stays on its grid through them
_MOVES = {operator.getitem, F.pad, torch.flatten, torch.reshape, F.max_pool2d}
_POOLS = {F.adaptive_avg_pool2d, F.avg_pool2d}
_POOL_MODULES = (nn.AdaptiveAvgPool2d, nn.AvgPool2d)
_MOVE_METHODS = {"flatten", "view", "reshape", "contiguous", "permute", "transpose"}


class TensorQuant(nn.Module):
    """Fake-quantizes one activation tensor on the uint8 grid: with a QuantLayer's (or another TensorQuant's)
    parameters when `owner` is given, else with its own calibrated range at `bits`."""

    qdrop: Optional[tuple[float, torch.Generator]] = None  # set only while reconstruction drops quantization (QDrop)

    def __init__(self, owner: Optional[nn.Module] = None, bits: int = 8) -> None:
        super().__init__()
        object.__setattr__(self, "owner", owner)  # not a submodule: its parameters stay where they are
        self.a_bits = int(bits)
        self.act_quant = False
        self.observer = None
        if owner is None:
            self.register_buffer("a_scale", torch.ones(()))
            self.register_buffer("a_zero", torch.zeros(()))

    def params(self) -> Optional[tuple[torch.Tensor, torch.Tensor]]:
        """(scale, zero point) in use, or None while this tensor passes through unquantized."""
        src = self.owner if self.owner is not None else self
        if isinstance(src, TensorQuant) and src is not self:
            return src.params()
        if not src.act_quant or src.a_bits >= FLOAT_BITS:
            return None
        return src.a_scale, src.a_zero

    @torch.no_grad()
    def set_act_range(self, lo: float, hi: float) -> None:
        """Fix this tensor's own range (owned TensorQuants only) and enable quantization."""
        if self.owner is not None:
            raise RuntimeError("a shared TensorQuant takes its range from its owner")
        s, z = act_qparams(lo, hi, self.a_bits)
        self.a_scale.fill_(s)
        self.a_zero.fill_(z)
        self.act_quant = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.observer is not None:
            self.observer.update(x)
        p = self.params()
        if p is None:
            return x
        return drop_quant(x, fake_quant(x, p[0], p[1], *unsigned_range(8)), self.qdrop)

    def extra_repr(self) -> str:
        return "shared" if self.owner is not None else f"own range, bits={self.a_bits}"

    def size_bits(self) -> int:
        """Storage: scale and zero point of an own range (a shared one stores nothing)."""
        return 0 if self.owner is not None else 64


def tensor_quants(model: nn.Module, own_only: bool = False) -> list[TensorQuant]:
    """The TensorQuants of a model in module order (`own_only`: those with their own range)."""
    return [m for m in model.modules() if isinstance(m, TensorQuant) and (m.owner is None or not own_only)]


def act_quantizers(model: nn.Module) -> list[nn.Module]:
    """Everything with a calibrated activation range: QuantLayers and the TensorQuants with their own range."""
    return [m for m in model.modules() if isinstance(m, QuantLayer) or (isinstance(m, TensorQuant) and m.owner is None)]


@torch.no_grad()
def int8_activations_(model: nn.Module) -> int:
    """Move every sub-8-bit activation grid to the uint8 grid spanning the same clipped range (weights keep their
    b-bit grid); returns how many grids were widened. A widened layer whose input is a tensor with its own 8-bit
    grid (the shortcut rule of the fused layout) then reads that grid, so no requantization is left between them."""
    n = 0
    for m in act_quantizers(model):
        if m.act_quant and m.a_bits < 8:
            s, z = float(m.a_scale), float(m.a_zero)
            lo, hi = (0 - z) * s, (2 ** m.a_bits - 1 - z) * s  # the b-bit grid's ends: uint8 saturation clips there
            m.a_bits = 8
            m.set_act_range(lo, hi)
            n += 1
    if n:
        share_input_grids_(model)
    return n


@torch.no_grad()
def share_input_grids_(model: nn.Module) -> int:
    """Let every 8-bit QuantLayer that reads a TensorQuant with its own 8-bit range take that range (input_shared),
    as the fused layout does at 8 bits; returns how many layers changed."""
    graph = getattr(model, "graph", None)
    if graph is None:
        return 0
    mods = dict(model.named_modules())
    n = 0
    for node in graph.nodes:
        layer = mods.get(node.target) if node.op == "call_module" else None
        if not isinstance(layer, QuantLayer) or layer.input_shared or not layer.act_quant or layer.a_bits != 8:
            continue
        src = node.args[0] if node.args else None
        tq = mods.get(src.target) if getattr(src, "op", None) == "call_module" else None
        if isinstance(tq, TensorQuant) and tq.owner is None and tq.act_quant and tq.a_bits == 8:
            layer.a_scale.copy_(tq.a_scale)
            layer.a_zero.copy_(tq.a_zero)
            layer.input_shared = True
            n += 1
    return n


def float_twin(model: nn.Module) -> nn.Module:
    """A copy of a quantized model with every quantizer off: the same graph in FP32."""
    import copy

    m = copy.deepcopy(model)
    for q in quant_layers(m):
        q.w_bits = q.a_bits = FLOAT_BITS
        q.act_quant = q.int_bias = False
        q.undo_bias_correction()
    for t in tensor_quants(m):
        t.act_quant = False
        if t.owner is None:
            t.a_bits = FLOAT_BITS
    return m


def layout_of(model: nn.Module) -> str:
    """'fused' when the model carries TensorQuants, else 'inputs'."""
    return "fused" if tensor_quants(model) else "inputs"


class _Tracer:
    """torch.fx tracer that keeps QuantLayers and TensorQuants as leaves."""

    @staticmethod
    def trace(model: nn.Module):
        import torch.fx as fx

        class T(fx.Tracer):
            def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
                return isinstance(m, (QuantLayer, TensorQuant)) or super().is_leaf_module(m, qualname)

        with eval_modes(model):  # Python-level `if self.training` branches (drop-path) are traced as in inference
            return T().trace(model)


def _carried(src: nn.Module, dst: nn.Module) -> dict[str, Any]:
    """The model's own attributes (its datafree record, head name) that the traced module lacks."""
    out = {k: v for k, v in vars(src).items()
           if (not k.startswith("_") or k == RECORD_ATTR) and k != "training" and k not in vars(dst)}
    for k in ("head_name", "HEAD"):
        if not hasattr(dst, k) and hasattr(src, k):
            out[k] = getattr(src, k)
    return out


def _graph_module(root: nn.Module, graph: Any, class_name: str) -> nn.Module:
    """A GraphModule that keeps root's own attributes, also through copy.deepcopy (plain GraphModules drop them)."""
    import copy

    import torch.fx as fx

    class QuantGraphModule(fx.GraphModule):
        def __deepcopy__(self, memo: dict) -> "QuantGraphModule":
            res = super().__deepcopy__(memo)
            for k, v in _carried(self, res).items():
                setattr(res, k, copy.deepcopy(v, memo))
            return res

    gm = QuantGraphModule(root, graph, class_name=class_name)
    for k, v in _carried(root, gm).items():
        setattr(gm, k, v)
    return gm


class _LayoutPass:
    """The fused layout's graph rewrite: where a TensorQuant goes, step by step (see `apply_layout`)."""

    def __init__(self, model: nn.Module, graph: Any) -> None:
        self.model, self.graph = model, graph
        self.mods = dict(model.named_modules())
        self.count = 0
        self.original = list(graph.nodes)  # steps 0 and 1 look at the traced nodes only

    def mod(self, n: Any) -> Optional[nn.Module]:
        import torch.fx as fx

        return self.mods.get(n.target) if isinstance(n, fx.Node) and n.op == "call_module" else None

    def is_ql(self, n: Any) -> bool:
        return isinstance(self.mod(n), QuantLayer)

    def is_add(self, n: Any) -> bool:
        import torch.fx as fx

        return ((n.op == "call_function" and n.target in _ADDS) or (n.op == "call_method" and n.target in ("add", "add_"))) \
            and sum(isinstance(a, fx.Node) for a in n.args[:2]) == 2

    def is_relu(self, n: Any) -> bool:
        return (n.op == "call_function" and n.target in _RELUS) or (n.op == "call_method" and n.target == "relu") \
            or isinstance(self.mod(n), nn.ReLU)

    def tq_of(self, n: Any) -> Optional[TensorQuant]:
        m = self.mod(n)
        return m if isinstance(m, TensorQuant) else None

    def insert_after(self, n: Any, tq: TensorQuant, users: Optional[list] = None) -> Any:
        """Quantize node n's output with `tq` for all its users (or the given ones)."""
        name = f"_tq{self.count}"
        self.count += 1
        self.model.add_module(name, tq)
        self.mods[name] = tq
        with self.graph.inserting_after(n):
            q = self.graph.call_module(name, (n,))
        for u in (list(n.users) if users is None else users):
            if u is not q:
                u.replace_input_with(n, q)
        return q

    def upstream_quant(self, n: Any) -> Optional[TensorQuant]:
        """The TensorQuant a tensor was only moved or padded from, if any."""
        import torch.fx as fx

        while True:
            if self.tq_of(n) is not None:
                return self.tq_of(n)
            m = self.mod(n)
            moving = (n.op == "call_function" and n.target in _MOVES) or \
                     (n.op == "call_method" and n.target in _MOVE_METHODS) or isinstance(m, nn.Identity) or \
                     (isinstance(m, nn.Sequential) and len(m) == 0)
            if not moving or not n.args or not isinstance(n.args[0], fx.Node):
                return None
            n = n.args[0]

    def reshapes(self) -> None:
        """0. a QuantLayer reading a reshaped tensor (flatten after pooling): quantized before the reshape as well, with
        the QuantLayer's parameters (exact), so the pooling runs on integers too."""
        import torch.fx as fx

        for n in self.original:
            r = n.args[0] if self.is_ql(n) and n.args else None
            while isinstance(r, fx.Node) and isinstance(self.mod(r), (nn.Dropout, nn.Identity)) and len(r.users) == 1 \
                    and r.args and isinstance(r.args[0], fx.Node):
                r = r.args[0]  # dropout (identity in inference) between the flatten and the classifier
            reshape = isinstance(r, fx.Node) and ((r.op == "call_function" and r.target in (torch.flatten, torch.reshape))
                                                  or (r.op == "call_method" and r.target in ("flatten", "view", "reshape")))
            if reshape and len(r.users) == 1 and isinstance(r.args[0], fx.Node) and len(r.args[0].users) == 1:
                self.insert_after(r.args[0], TensorQuant(self.mod(n)))

    def shared_inputs(self, sub8_own_range: bool) -> None:
        """1. a tensor read by a QuantLayer and by anything else: quantized once, with that QuantLayer's parameters."""
        for n in self.original:
            qls = [u for u in n.users if self.is_ql(u)]
            if qls and len(n.users) > 1:
                owner = self.mod(qls[0])
                assert isinstance(owner, QuantLayer)
                if sub8_own_range and owner.a_bits < 8:
                    self.insert_after(n, TensorQuant(None, 8))  # the shortcut keeps 8-bit precision; the layer requantizes
                    continue
                owner.input_shared = True
                self.insert_after(n, TensorQuant(owner))

    def adds(self) -> None:
        """2. adds: both operands and the output (after its ReLU) quantized."""
        for a in [n for n in self.graph.nodes if self.is_add(n)]:
            for x in a.args[:2]:
                if self.tq_of(x) is not None:
                    continue
                up = self.upstream_quant(x)
                self.insert_after(x, TensorQuant(up) if up is not None else TensorQuant(None, 8))
            out = a
            if len(a.users) == 1 and self.is_relu(next(iter(a.users))):
                out = next(iter(a.users))
            if all(self.is_ql(u) for u in out.users) or any(self.tq_of(u) is not None for u in out.users):
                continue  # read only by QuantLayers (they quantize it), or already quantized in step 1
            self.insert_after(out, TensorQuant(None, 8))

    def pools(self) -> None:
        """3. a pooling whose output is quantized runs on integers when its input is quantized too."""
        import torch.fx as fx

        for n in list(self.graph.nodes):
            pool = (n.op == "call_function" and n.target in _POOLS) or isinstance(self.mod(n), _POOL_MODULES)
            if not pool or not n.args or not isinstance(n.args[0], fx.Node) or self.tq_of(n.args[0]) is not None:
                continue
            reads_quantized = all(self.tq_of(u) is not None or self.is_ql(u) for u in n.users) or any(
                self.tq_of(v) is not None for u in n.users for v in u.users)  # pool -> flatten -> quantized
            if reads_quantized:
                up = self.upstream_quant(n.args[0])
                self.insert_after(n.args[0], TensorQuant(up) if up is not None else TensorQuant(None, 8))


def apply_layout(model: nn.Module, layout: str, sub8_own_range: bool = True) -> nn.Module:
    """The model with the given activation layout: 'inputs' returns it as it is; 'fused' returns a torch.fx
    GraphModule (same submodules and state-dict names, plus TensorQuants) — see the module docstring.
    `sub8_own_range=False` rebuilds files made before sub-8-bit readers stopped sharing their grid."""
    if layout not in LAYOUTS:
        raise DatafreeError(f"unknown quantization layout {layout!r}; use one of {', '.join(LAYOUTS)}")
    if layout == "inputs" or tensor_quants(model):
        return model
    try:
        graph = _Tracer.trace(model)
    except Exception as e:  # user models with data-dependent control flow
        raise DatafreeError(f"the model cannot be traced by torch.fx for the fused layout ({type(e).__name__}: "
                            f"{str(e).splitlines()[0] if str(e) else ''}); use --layout inputs") from None
    lp = _LayoutPass(model, graph)
    lp.reshapes()
    lp.shared_inputs(sub8_own_range)
    lp.adds()
    lp.pools()
    for q in [lp.mod(n) for n in graph.nodes if lp.is_ql(n)]:
        assert isinstance(q, QuantLayer)
        q.int_bias = True
    graph.lint()
    return _graph_module(model, graph, type(model).__name__)
