"""QuantLayer: a conv or linear layer (BN folded in) with fake-quantized weights and input."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...core.errors import DatafreeError
from ...core.utils import batch_moments, fold_bn
from .quantizer import (
    RangeObserver,
    WeightRounding,
    drop_quant,
    fake_quant,
    round_ste,
    signed_range,
    unsigned_range,
    weight_scales,
)

FLOAT_BITS = 32


def as_parameter_(mod: nn.Module, name: str) -> nn.Parameter:
    """Turn buffer `name` of `mod` into a trainable parameter with the same value (no-op if it is one); returns it."""
    t = getattr(mod, name)
    if not isinstance(t, nn.Parameter):
        delattr(mod, name)  # drops the buffer
        mod.register_parameter(name, nn.Parameter(t.detach().clone()))
    return getattr(mod, name)


def as_buffer_(mod: nn.Module, name: str) -> None:
    """Turn parameter `name` of `mod` back into a buffer with the same value."""
    t = getattr(mod, name).detach().clone()
    delattr(mod, name)
    mod.register_buffer(name, t)


def own_forward(layer: nn.Module) -> Optional[nn.Module]:
    """For a conv/linear subclass that overrides forward: a shell of it without tensors, whose forward runs with the
    weight and bias given to it; None for plain nn.Conv2d / nn.Linear."""
    base = nn.Conv2d if isinstance(layer, nn.Conv2d) else nn.Linear
    if type(layer).forward is base.forward:
        return None
    import copy

    extra = [n for n, _ in layer.named_parameters() if n not in ("weight", "bias")] + \
        [n for n, _ in layer.named_buffers()]
    if extra:
        raise DatafreeError(f"{type(layer).__name__} keeps tensors of its own ({', '.join(extra)}) besides weight and "
                            "bias; datafree cannot quantize such a layer")
    shell = copy.deepcopy(layer)
    for k in ("weight", "bias"):
        shell._parameters.pop(k, None)
    return shell


class _Captured(Exception):
    """Raised by `_FirstCall` to stop a forward once the call it waits for is seen."""


class _FirstCall(torch.overrides.TorchFunctionMode):
    """Records the input and conv arguments of the first conv2d / linear call inside the `with` block, then stops it."""

    _CONV_ARGS = ("stride", "padding", "dilation", "groups")

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name, self.input, self.conv_args = name, None, {}

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        kwargs = kwargs or {}
        if getattr(func, "__name__", "") == self.name:
            self.input = args[0] if args else kwargs["input"]
            if self.name == "conv2d":
                given = dict(zip(self._CONV_ARGS, args[3:]), **{k: v for k, v in kwargs.items() if k in self._CONV_ARGS})
                self.conv_args = {"stride": 1, "padding": 0, "dilation": 1, "groups": 1, **given}
            raise _Captured
        return func(*args, **kwargs)


class QuantLayer(nn.Module):
    """Conv/linear with per-channel symmetric weight and per-tensor asymmetric input fake-quant."""

    qdrop: Optional[tuple[float, torch.Generator]] = None  # set only while reconstruction drops quantization (QDrop)
    correcting: Optional[str] = None  # "samples" / "bn" only during bias correction (`correct_bias_`)

    def __init__(self, layer: nn.Module, bn: Optional[nn.Module] = None, w_bits: int = 8, a_bits: int = 8) -> None:
        super().__init__()
        if isinstance(layer, nn.Conv2d):
            self.kind = "conv2d"
            self.conv_args = dict(stride=layer.stride, padding=layer.padding, dilation=layer.dilation, groups=layer.groups)
            if layer.padding_mode != "zeros":
                raise DatafreeError(f"only zero-padded convolutions can be quantized, not padding_mode={layer.padding_mode!r}")
        elif isinstance(layer, nn.Linear):
            self.kind = "linear"
            self.conv_args = {}
        else:
            raise TypeError(f"cannot quantize {type(layer).__name__}")
        # a subclass with its own forward (padding inside forward, a TF port's "same" convolution) keeps it: the
        # quantized layer runs that forward with the quantized weight and bias given to it (`own_forward`)
        object.__setattr__(self, "_inner", own_forward(layer))
        w = layer.weight.detach().clone()
        b = layer.bias.detach().clone() if layer.bias is not None else torch.zeros(w.shape[0], dtype=w.dtype, device=w.device)
        gamma = beta = bn_std = torch.empty(0, device=w.device)
        eps = 0.0
        if bn is not None:
            w, b = fold_bn(w, b, bn)
            std = torch.sqrt(bn.running_var + bn.eps)
            g = bn.weight.detach() if bn.weight is not None else torch.ones_like(std)
            bt = bn.bias.detach() if bn.bias is not None else torch.zeros_like(std)
            gamma, beta, bn_std, eps = g.clone(), bt.clone(), std.clone(), float(bn.eps)
        self.weight = nn.Parameter(w)
        self.bias = nn.Parameter(b)
        self.register_buffer("bn_gamma", gamma)
        self.register_buffer("bn_beta", beta)
        self.register_buffer("bn_std", bn_std)  # sqrt(var + eps) of the folded BN, in pre-BN units
        self.bn_eps = eps
        self.w_bits, self.a_bits = int(w_bits), int(a_bits)
        # the part of the bias that bias correction added (the float model's bias is bias - bias_corr)
        self.register_buffer("bias_corr", torch.zeros_like(b))
        self.register_buffer("w_scale", torch.ones(w.shape[0], dtype=w.dtype, device=w.device))
        self.register_buffer("a_scale", torch.ones((), device=w.device))
        self.register_buffer("a_zero", torch.zeros((), device=w.device))
        self.rounding: WeightRounding = WeightRounding()  # swappable (e.g. learned rounding); stateless by default
        self.act_quant = False  # on once the input range is calibrated
        self.int_bias = False  # bias on the int32 grid of step a_scale·w_scale (the fused integer layout)
        self.input_shared = False  # the input arrives already quantized with this layer's own (scale, zero)
        self.observer: Optional[RangeObserver] = None
        self._reest: Optional[list] = None  # [sum_mean, sum_var, count] while re-estimating BN
        self.set_weight_scales()

    @property
    def folded_bn(self) -> bool:
        """Whether a BatchNorm was folded into this layer."""
        return self.bn_gamma.numel() > 0

    @torch.no_grad()
    def set_weight_scales(self, method: str = "mse") -> None:
        """Recompute the per-channel weight scales from the current weights."""
        if self.w_bits < FLOAT_BITS:
            self.w_scale.copy_(weight_scales(self.weight, self.w_bits, method))

    @torch.no_grad()
    def set_act_range(self, lo: float, hi: float) -> None:
        """Fix the input quantization range and enable input quantization."""
        from .quantizer import act_qparams

        if self.a_bits < FLOAT_BITS:
            s, z = act_qparams(lo, hi, self.a_bits)
            self.a_scale.fill_(s)
            self.a_zero.fill_(z)
            self.act_quant = True

    def _w_step(self) -> torch.Tensor:
        return self.w_scale.view(-1, *[1] * (self.weight.dim() - 1))

    def weight_ints(self) -> torch.Tensor:
        """The weight's integers on the signed b-bit grid, as the current rounding chooses them (sub-float layers)."""
        qmin, qmax = signed_range(self.w_bits)
        return torch.clamp(self.rounding(self.weight / self._w_step()), qmin, qmax)

    def quant_weight(self) -> torch.Tensor:
        """The fake-quantized weight."""
        if self.w_bits >= FLOAT_BITS:
            return self.weight
        return self.weight_ints() * self._w_step()

    @torch.no_grad()
    def bake_rounding(self) -> None:
        """Write the current rounding's quantized weight into the weight and return to round-to-nearest."""
        if self.w_bits < FLOAT_BITS:
            self.weight.copy_(self.quant_weight())
        self.set_rounding(WeightRounding())

    def quantize_input(self, x: torch.Tensor) -> torch.Tensor:
        """The input on this layer's b-bit grid (identity before calibration or at float bits)."""
        if self.act_quant and self.a_bits < FLOAT_BITS:
            qmin, qmax = unsigned_range(self.a_bits)
            return drop_quant(x, fake_quant(x, self.a_scale, self.a_zero, qmin, qmax), self.qdrop)
        return x

    def bias_scale(self) -> Optional[torch.Tensor]:
        """Per-channel step of the int32 bias (input scale · weight scale), or None where the bias stays float."""
        if self.int_bias and self.act_quant and self.a_bits < FLOAT_BITS and self.w_bits < FLOAT_BITS:
            return self.a_scale * self.w_scale
        return None

    def quant_bias(self) -> torch.Tensor:
        """The bias as the integer kernel adds it: on the int32 grid of bias_scale() when int_bias is on."""
        s = self.bias_scale()
        return self.bias if s is None else round_ste(self.bias / s) * s

    def set_rounding(self, rounding: WeightRounding) -> None:
        """Swap the weight rounding (the seam where learned rounding plugs in)."""
        if not isinstance(rounding, WeightRounding):
            raise TypeError(f"rounding must be a WeightRounding, got {type(rounding).__name__}")
        self.rounding = rounding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.observer is not None:
            self.observer.update(x)
        x = self.quantize_input(x)
        w, b = self.quant_weight(), self.quant_bias()
        y = self.op(x, w, b)
        if self.correcting:
            y = self._correct_bias(x, y)
        if self._reest is not None and self.folded_bn:
            m, v = batch_moments(y)
            n = y.shape[0]
            self._reest[0] += m.detach() * n
            self._reest[1] += v.detach() * n
            self._reest[2] += n
            shape = (1, -1) + (1,) * (y.dim() - 2)
            y = (y - m.view(shape)) * self._reest_scale(v).view(shape) + self.bn_beta.view(shape)
        return y

    def op(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """The layer's own operation with these weights: a subclass's forward, else conv2d / linear."""
        shell = self._inner
        if shell is not None:  # the subclass's forward reads self.weight / self.bias: these, for this call
            shell.__dict__["weight"], shell.__dict__["bias"] = w, b
            try:
                return shell(x)
            finally:
                del shell.__dict__["weight"], shell.__dict__["bias"]
        return F.conv2d(x, w, b, **self.conv_args) if self.kind == "conv2d" else F.linear(x, w, b)

    def op_input(self, x: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """The input the layer's conv2d / linear call sees (after a subclass's own padding) and that call's conv
        arguments: what GPTQ's input moments must be taken over."""
        if self._inner is None:
            return x, self.conv_args
        cap = _FirstCall("conv2d" if self.kind == "conv2d" else "linear")
        try:
            with cap:
                self.op(x, self.weight, self.bias)
        except _Captured:
            pass
        if cap.input is None:  # the subclass never called the plain operation: the input as given
            return x, self.conv_args
        return cap.input, cap.conv_args

    def channel_dim(self, y: torch.Tensor) -> int:
        """The output-channel dimension of `y`, an output of this layer."""
        return 1 if self.kind == "conv2d" else y.dim() - 1

    @torch.no_grad()
    def _correct_bias(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Empirical bias correction: add to the bias the mean per-channel output shift that the quantized weights cause
        on this input (recorded in bias_corr); returns the corrected output. With `correcting == "bn"` and a folded BN,
        the output passed on is moved to the BN's own moments (mean β, std |γ| per channel, as the float layer's output
        on the data the model was trained on), so later layers see inputs whose moments come from the model itself."""
        ch = self.channel_dim(y)
        dims = [d for d in range(y.dim()) if d != ch]
        shape = [-1 if d == ch else 1 for d in range(y.dim())]
        moved = self.correcting == "bn" and self.folded_bn
        if self.w_bits >= FLOAT_BITS and not moved:
            return y
        y_float = self.op(x, self.weight, self.bias)
        if self.w_bits < FLOAT_BITS:
            shift = (y_float - y).mean(dims)
            self.bias.add_(shift)
            self.bias_corr.add_(shift)
            y = y + shift.view(shape)
        if moved:
            scale, shift = bn_move(y_float, self.bn_gamma, self.bn_beta, ch)
            y = y * scale.view(shape) + shift.view(shape)
        return y

    @torch.no_grad()
    def undo_bias_correction(self) -> None:
        """Back to the float model's bias (bias correction's shift removed)."""
        self.bias.sub_(self.bias_corr)
        self.bias_corr.zero_()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[no-untyped-def]
        # files written before bias correction have no bias_corr: nothing was added
        if prefix + "bias" in state_dict and prefix + "bias_corr" not in state_dict:
            state_dict[prefix + "bias_corr"] = torch.zeros_like(state_dict[prefix + "bias"])
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _reest_scale(self, var_y: torch.Tensor) -> torch.Tensor:
        """|γ| / sqrt(var_z + eps) expressed with the folded output's variance var_y (var_z = var_y·σ²/γ²)."""
        g2 = self.bn_gamma.pow(2)
        return self.bn_gamma.abs() / torch.sqrt(var_y + self.bn_eps * g2 / self.bn_std.pow(2)).clamp_min(1e-12)

    def begin_bn_reestimate(self) -> None:
        """Start accumulating this layer's output statistics (train-mode BN over the folded output)."""
        if self.folded_bn:
            z = torch.zeros_like(self.bias)
            self._reest = [z.clone(), z.clone(), 0]

    def end_bn_reestimate(self) -> None:
        """Fold the re-estimated statistics into weight and bias, then refresh weight scales."""
        if self._reest is None:
            return
        sm, sv, n = self._reest
        self._reest = None
        if n == 0:
            return
        m, v = sm / n, sv / n
        a = self._reest_scale(v)
        with torch.no_grad():
            self.bn_std.copy_(torch.sqrt(v * self.bn_std.pow(2) / self.bn_gamma.pow(2).clamp_min(1e-24) + self.bn_eps))
            self.weight.mul_(a.view(-1, *[1] * (self.weight.dim() - 1)))
            self.bias.copy_((self.bias - m) * a + self.bn_beta)
            self.bias_corr.zero_()  # the bias is rebuilt from the statistics
        self.set_weight_scales()

    def extra_repr(self) -> str:
        return f"{self.kind}, w_bits={self.w_bits}, a_bits={self.a_bits}, out={self.weight.shape[0]}, folded_bn={self.folded_bn}"

    def macs(self, out: torch.Tensor) -> int:
        """Multiply-accumulates of one sample (as the conv/linear it replaces)."""
        k = self.weight[0].numel()
        return out[0].numel() * k if self.kind == "conv2d" else self.weight.shape[0] * k

    def size_bits(self) -> int:
        """Storage: weights at w_bits, bias and scales at 32 bits."""
        return self.weight.numel() * min(self.w_bits, FLOAT_BITS) + (self.bias.numel() + self.w_scale.numel() + 2) * 32


def bn_move(y: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, ch: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel (scale, shift) that move `y` (channel dim `ch`) to mean β and std |γ|; a channel that does not vary
    (std below 1e-3 |γ|: a constant input) is only shifted, never blown up."""
    dims = [d for d in range(y.dim()) if d != ch]
    m, sd, g = y.mean(dims), y.std(dims), gamma.abs()
    scale = torch.where(sd > 1e-3 * g, g / sd.clamp_min(1e-12), torch.ones_like(sd))
    return scale, beta - m * scale


def quant_layers(model: nn.Module) -> list[QuantLayer]:
    """All QuantLayers of a model, in module order."""
    return [m for m in model.modules() if isinstance(m, QuantLayer)]
