"""Post-training quantization: fold BN, quantize weights, calibrate input ranges, re-estimate BN."""
from __future__ import annotations

import copy
import dataclasses
from typing import Any, Callable, ClassVar, Optional

import torch
import torch.nn as nn

from ...core.config import Config, check, nested, opt
from ...core.errors import DatafreeError
from ...core.schema import Schema, submodule
from ...core.utils import model_device, set_module
from ...data.base import TensorData
from ...data.source import SourceLike, draw
from ...kd.loop import KDConfig
from ...models.loading import input_spec_of
from ...models.record import record_of
from ..base import plain_copy, record_transform, register_compressor
from .graph import LAYOUTS, act_quantizers, apply_layout, layout_of, tensor_quants
from .layers import FLOAT_BITS, QuantLayer, bn_move, quant_layers
from .mixed import MixedConfig
from .prepare import trace_layers, wrap_layers_
from .qat import FinetuneConfig
from .quantizer import RangeObserver
from .reconstruct import ReconConfig


def _bits_ok(b: int) -> bool:
    return 2 <= b <= 8 or b == FLOAT_BITS


@dataclasses.dataclass
class QuantConfig(Config):
    """Simulated PTQ settings: the grid and calibration, with reconstruction, mixed precision and fine-tuning nested."""

    # 2: round_norm (files before it reconstructed with the per-weight mean scale); 3: recon/mixed/finetune nested;
    # 4: bias_from (files before it corrected biases on the samples as they were); 5: ranges_from auto (files before it
    # observed ranges on the samples as they were)
    version: ClassVar[int] = 5

    w_bits: int = opt(8, "weight bits (2-8, 32 = float)", cli=True)
    a_bits: int = opt(8, "activation bits (2-8, 32 = float)", cli=True)
    quantize_first_last: bool = opt(False, "quantize first and last layer to --w-bits/--a-bits too (otherwise they stay at "
                                           "--first-last-bits)", cli=True)
    first_last_bits: int = opt(8, "bits of first and last layer when kept apart", cli=True)
    weight_method: str = opt("mse", "per-channel weight clipping", flag="--weight-clip", cli=True, choices=("mse", "minmax"))
    act_method: str = opt("mse", "activation range calibration", flag="--act-range", cli=True,
                          choices=("mse", "percentile", "minmax"))
    percentile: float = opt(99.99, "percentile of the activation range (--act-range percentile)", lo=0, lo_open=True,
                            hi=100)
    bias_correct: bool = opt(False, "empirical bias correction after calibration: each quantized layer's bias absorbs the "
                                    "mean output shift its quantized weights cause on the calibration samples (layers in "
                                    "order, each seeing the corrected ones before it; Nagel et al. 2019); reconstruction "
                                    "then learns the rounding with the corrected biases in place", cli=True)
    bias_from: str = opt("bn", "moments of each BN-folded layer's output during bias correction: bn = the model's own "
                               "BatchNorm statistics (mean beta, std |gamma|; the samples give only the shape: best for "
                               "synthetic samples), samples = the calibration samples as they are (best for real data)",
                         cli=True, choices=("bn", "samples"))
    ranges_from: str = opt("auto", "moments of each BN-folded layer's output while activation ranges are observed: "
                                   "samples = the calibration samples as they are; bn = moved to the BN's own mean beta "
                                   "and std |gamma| (as --bias-from bn; for synthetic samples at 4-bit activations); "
                                   "auto = bn below 8-bit activations, else samples", cli=True,
                           choices=("auto", "samples", "bn"))
    bn_reestimate: bool = opt(False, "re-estimate BN statistics of the quantized model on the data", cli=True)
    fold_bn: bool = opt(True, "fold each BN into the conv/linear before it")
    num_calib: int = opt(512, "calibration samples used", cli=True, lo=1)
    batch_size: int = opt(128, "calibration batch size", lo=1)
    seed: int = opt(0, "seed for sample selection")
    layout: str = opt("fused", "activation layout: fused = one quantizer per tensor, residual adds and int32 biases "
                               "included, as onnxruntime's integer kernels run it; inputs = each layer quantizes its "
                               "own input only (datafree <= 0.3; the shortcut stays float)", cli=True, choices=LAYOUTS)
    recon: ReconConfig = nested(ReconConfig, "reconstruction after calibration")
    mixed: MixedConfig = nested(MixedConfig, "mixed precision")
    finetune: FinetuneConfig = nested(FinetuneConfig, "KD fine-tuning of the quantized model")

    @classmethod
    def migrate(cls, d: dict[str, Any], from_version: int) -> dict[str, Any]:
        """Version 1 files reconstructed with the per-weight mean loss scale; versions 1-2 were flat; before 4 bias
        correction used the samples' own moments; before 5 so did the activation ranges."""
        if from_version < 2:
            d = {"round_norm": "mean", **d}
        if from_version < 4:
            d = {"bias_from": "samples", **d}
        if from_version < 5:
            d = {"ranges_from": "samples", **d}
        return cls.group_flat(d) if from_version < 3 else d

    def range_moments(self) -> str:
        """The moments activation ranges are observed with: `ranges_from`, with auto resolved by the activation bits."""
        if self.ranges_from == "auto":
            return "bn" if self.a_bits < 8 else "samples"
        return self.ranges_from

    def validate(self) -> None:
        for k in ("w_bits", "a_bits", "first_last_bits"):
            v = getattr(self, k)
            check(_bits_ok(v), f"{k} must be between 2 and 8 (or 32 for float), got {v}", k)
        check(not (self.recon.method == "gptq" and self.bn_reestimate),
              "gptq rounds the weights in the bias-correction pass, before --bn-reestimate rescales "
              "them: use one of the two", "reconstruct")


def make_plan(model: nn.Module, cfg: QuantConfig) -> list[dict]:
    """Which layers to quantize at which bits, and which BN each one folds."""
    spec = input_spec_of(model)
    example = torch.zeros((2, *spec.shape), device=model_device(model))
    layers = trace_layers(model, example)
    plan = []
    for i, (name, bn) in enumerate(layers):
        edge = i == 0 or i == len(layers) - 1
        wb, ab = (cfg.first_last_bits, cfg.first_last_bits) if edge and not cfg.quantize_first_last else (cfg.w_bits, cfg.a_bits)
        plan.append({"name": name, "bn": bn if cfg.fold_bn else None, "w_bits": wb, "a_bits": ab})
    return plan


@torch.no_grad()
def _run(model: nn.Module, data: TensorData, batch_size: int) -> None:
    dev = model_device(model)
    for xb in data.batches(batch_size):
        model(xb.to(dev))


MAX_CORRECT_VALUES = 64 * 3 * 224 * 224  # input values of one bias-correction pass (64 ImageNet images)


def _one_pass_size(data: TensorData) -> int:
    """How many samples of `data` one single-batch pass takes (bias correction, BN moves): at most MAX_CORRECT_VALUES
    input values."""
    return max(1, min(len(data), MAX_CORRECT_VALUES // max(1, data.x[0].numel())))


def _check_moments(moments: str) -> None:
    if moments not in ("bn", "samples"):
        raise ValueError(f"moments must be 'bn' or 'samples', got {moments!r}")


@torch.no_grad()
def bn_moves(model: nn.Module, data: TensorData) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per BN-folded QuantLayer (name -> per-channel scale, shift): the affine map that moves its float output on
    (a bounded subset of) `data`, with the layers before it moved, to its BN's own mean β and std |γ|."""
    from .graph import float_twin

    twin = float_twin(model).eval()
    n = _one_pass_size(data)
    moves: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def hook(name: str, q: QuantLayer) -> Callable:
        def move(_m: nn.Module, _i: Any, y: torch.Tensor) -> torch.Tensor:
            moves[name] = bn_move(y, q.bn_gamma, q.bn_beta, q.channel_dim(y))
            return _moved(q, y, moves[name])
        return move

    handles = [q.register_forward_hook(hook(name, q)) for name, q in twin.named_modules()
               if isinstance(q, QuantLayer) and q.folded_bn]
    try:
        twin(data.x[:n].to(model_device(twin)))
    finally:
        for h in handles:
            h.remove()
    return moves


def _moved(q: QuantLayer, y: torch.Tensor, move: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """`y`, an output of `q`, under the per-channel affine `move` (scale, shift)."""
    ch = q.channel_dim(y)
    shape = [-1 if d == ch else 1 for d in range(y.dim())]
    return y * move[0].view(shape) + move[1].view(shape)


def calibrate_activations_(model: nn.Module, data: TensorData, cfg: QuantConfig, moments: str = "samples") -> None:
    """Observe every activation quantizer's input on `data` (all unquantized while observing) and set ranges; with
    `moments="bn"` every BN-folded layer's output is moved to its BN's mean β and std |γ| while observing (`bn_moves`),
    so the ranges follow the model's statistics and the samples give only the shape."""
    _check_moments(moments)
    layers = act_quantizers(model)
    was = [q.act_quant for q in layers]
    handles: list[Any] = []
    if moments == "bn":
        moves = bn_moves(model, data)
        handles = [q.register_forward_hook(lambda m, _i, y, mv=moves[name]: _moved(m, y, mv))
                   for name, q in model.named_modules() if name in moves]
    for q in layers:
        q.act_quant = False
        q.observer = RangeObserver(cfg.act_method, cfg.percentile)
    try:
        _run(model, data, cfg.batch_size)
        for q in layers:
            lo, hi = q.observer.range(q.a_bits)  # type: ignore[union-attr]
            q.set_act_range(lo, hi)
    finally:
        for h in handles:
            h.remove()
        for q, w in zip(layers, was):
            q.observer = None
            if not q.act_quant:
                q.act_quant = w


def _check_not_rounded(layers: list[QuantLayer], what: str) -> None:
    low = [q for q in layers if q.w_bits < FLOAT_BITS and bool(q.weight.detach().abs().sum() > 0)]
    if low and all(torch.allclose(q.weight, q.quant_weight(), rtol=0, atol=1e-6 * float(q.w_scale.max())) for q in low):
        raise DatafreeError(f"{what} compares float and quantized weights, but every quantized layer's weights "
                            "are already rounded (a reconstructed model): run it before reconstruction "
                            "(`quantize --bias-correct --reconstruct ...` does)")


def _layer_pass_(model: nn.Module, data: TensorData, correcting: Optional[str],
                 before: Optional[Callable[[QuantLayer, torch.Tensor], None]] = None) -> int:
    """One forward pass over (a bounded subset of) `data` as a single batch, layers in execution order: `before(q, x)`
    sees each QuantLayer's input first, then the layer runs (bias-correcting with `correcting`, from the float biases:
    a previous correction is replaced rather than added to); returns the samples."""
    n = _one_pass_size(data)
    layers = quant_layers(model)
    if correcting is not None:
        for q in layers:
            q.undo_bias_correction()
    handles = [] if before is None else \
        [q.register_forward_pre_hook(lambda m, args: before(m, args[0])) for q in layers]  # type: ignore[misc]
    for q in layers:
        q.correcting = correcting
    try:
        model(data.x[:n].to(model_device(model)))
    finally:
        for h in handles:
            h.remove()
        for q in layers:
            del q.correcting  # back to the class default
    return n


@torch.no_grad()
def correct_bias_(model: nn.Module, data: TensorData, moments: str = "bn") -> int:
    """Bias correction in one pass over (a bounded subset of) `data` as a single batch: each quantized layer, in
    execution order, adds to its float bias the mean per-channel shift between its float and quantized weights'
    outputs on its (quantized) input, and passes on the corrected output — with `moments="bn"` moved to the folded BN's
    mean and std, so the means it corrects with follow from the model's statistics rather than from the samples. In
    place (a previous correction is replaced); returns the number of samples used."""
    _check_moments(moments)
    _check_not_rounded(quant_layers(model), "bias correction")
    return _layer_pass_(model, data, moments)


@torch.no_grad()
def gptq_(model: nn.Module, data: TensorData, damp: float = 0.01, bias_moments: Optional[str] = "bn") -> dict:
    """GPTQ rounding (`gptq.py`) of every sub-float layer in one pass over (a bounded subset of) `data`, layers in
    execution order, each from the second moments of its quantized input; with `bias_moments` ("bn" / "samples") bias
    correction in the same pass (see `correct_bias_`). In place, the rounding baked into the weights; returns samples,
    layers and the summed output error Σ tr(ΔW H ΔWᵀ) of nearest rounding and of GPTQ's."""
    from .gptq import FixedRounding, gptq_ints, grouped, input_moments

    if bias_moments is not None:
        _check_moments(bias_moments)
    layers = quant_layers(model)
    _check_not_rounded(layers, "GPTQ")
    err = {"nearest": 0.0, "gptq": 0.0}

    def solve(q: QuantLayer, x: torch.Tensor) -> None:
        if q.w_bits >= FLOAT_BITS:
            return
        g = int(q.conv_args.get("groups", 1))
        xin, conv_args = q.op_input(q.quantize_input(x))  # a subclass's own padding included
        h = input_moments(q.kind, conv_args, q.weight.shape, xin)
        w, s = grouped(q.weight.detach(), g), q.w_scale.view(g, -1)
        ints = gptq_ints(w, s, h, q.w_bits, damp)
        for k, i in (("nearest", grouped(q.weight_ints(), g)), ("gptq", ints)):  # weight_ints: still round-to-nearest
            dw = (w - i.to(w.dtype) * s.unsqueeze(-1)).double()
            err[k] += float(torch.einsum("gri,gij,grj->", dw, h, dw)) / max(1, x.shape[0])
        q.set_rounding(FixedRounding(ints.reshape(q.weight.shape).to(q.weight.dtype)))

    n = _layer_pass_(model, data, bias_moments, solve)
    for q in layers:
        q.bake_rounding()
    return {"samples": n, "layers": sum(q.w_bits < FLOAT_BITS for q in layers), "damp": damp,
            "bias_moments": bias_moments, "output_error_nearest": err["nearest"], "output_error_gptq": err["gptq"]}


def reestimate_bn_(model: nn.Module, data: TensorData, batch_size: int = 128) -> None:
    """Re-estimate BN statistics of a quantized model on `data` (folded and unfolded BN alike)."""
    layers = quant_layers(model)
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    saved = [(m.momentum, m.training) for m in bns]
    for q in layers:
        q.begin_bn_reestimate()
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    try:
        _run(model, data, batch_size)
    finally:
        for m, (mom, tr) in zip(bns, saved):
            m.momentum = mom
            m.train(tr)
        for q in layers:
            q.end_bn_reestimate()


def prepare_quantized(model: nn.Module, cfg: QuantConfig) -> tuple[nn.Module, list[dict]]:
    """A deep copy of `model` with QuantLayers (BN folded, weight scales set) and the plan used."""
    st = QuantRun(model, cfg, calib=TensorData(torch.empty(0)))
    stage_fold(st)
    stage_weight_scales(st)
    assert st.qmodel is not None
    return st.qmodel, record_of(st.qmodel).quant_plan or []


@dataclasses.dataclass
class QuantRun:
    """What the stages of `quantize` share: the FP32 model (read only), the quantized copy being built, the data."""

    model: nn.Module
    config: QuantConfig
    calib: SourceLike
    bn_data: Optional[SourceLike] = None
    kd: Optional[KDConfig] = None  # fine-tuning by distillation (stage `finetune`), None = calibration only
    val: Optional[TensorData] = None
    progress: bool = False
    qmodel: Optional[nn.Module] = None
    info: dict = dataclasses.field(default_factory=dict)  # what stages report (e.g. fine-tuning history)

    def calib_subset(self) -> TensorData:
        """The `num_calib` calibration samples (drawn once)."""
        if "_calib" not in self.info:
            self.info["_calib"] = draw(self.calib, self.config.num_calib, self.config.seed)
        return self.info["_calib"]


Stage = Callable[[QuantRun], None]


def stage_fold(st: QuantRun) -> None:
    """Deep-copy the model, fold each BN into the conv/linear it follows and wrap those layers as QuantLayers."""
    qm = copy.deepcopy(plain_copy(st.model)).eval()  # a hashed model is quantized through its materialized weights
    plan = make_plan(qm, st.config)
    if st.config.mixed.on:
        from .mixed import mixed_plan_

        st.info["mixed"] = mixed_plan_(plan, qm, st.calib_subset(), st.config.mixed.avg_bits, st.config.mixed.target_size)
    wrap_layers_(qm, plan)
    rec = record_of(qm)
    rec.quant_plan, rec.quant_config = plan, st.config
    st.qmodel = apply_layout(qm, st.config.layout)


def stage_weight_scales(st: QuantRun) -> None:
    """Per-output-channel weight scales (MSE-optimal clipping or min/max)."""
    for q in quant_layers(_q(st)):
        q.set_weight_scales(st.config.weight_method)


def stage_calibrate(st: QuantRun) -> None:
    """Input ranges of every QuantLayer from the calibration samples."""
    calibrate_activations_(_q(st), st.calib_subset(), st.config, st.config.range_moments())


def stage_bias_correct(st: QuantRun) -> None:
    """With `bias_correct`: each quantized layer's bias absorbs the mean output shift of its quantized weights; with
    `reconstruct gptq` the GPTQ rounding is chosen in the same pass, layer by layer before its correction."""
    cfg = st.config
    if cfg.recon.method == "gptq":
        st.info["gptq"] = gptq_(_q(st), st.calib_subset(), cfg.recon.damp, cfg.bias_from if cfg.bias_correct else None)
        if cfg.bias_correct:
            st.info["bias_correct"] = {"samples": st.info["gptq"]["samples"], "moments": cfg.bias_from}
    elif cfg.bias_correct:
        st.info["bias_correct"] = {"samples": correct_bias_(_q(st), st.calib_subset(), cfg.bias_from),
                                   "moments": cfg.bias_from}


def stage_bn_reestimate(st: QuantRun) -> None:
    """With `bn_reestimate`: BN statistics of the quantized model re-estimated on data, then scales and ranges redone."""
    cfg = st.config
    if not cfg.bn_reestimate:
        return
    qm = _q(st)
    bn = draw(st.bn_data, cfg.num_calib, cfg.seed) if st.bn_data is not None else st.calib_subset()
    reestimate_bn_(qm, bn, cfg.batch_size)
    stage_weight_scales(st)
    stage_calibrate(st)


def stage_reconstruct(st: QuantRun) -> None:
    """With `reconstruct`: learned rounding (AdaRound per layer, BRECQ per block) on the calibration samples."""
    cfg = st.config
    if cfg.recon.method in ("none", "gptq"):  # gptq: chosen in the bias-correction pass
        return
    from .reconstruct import reconstruct_

    r = cfg.recon
    st.info["reconstruct"] = reconstruct_(_q(st), st.calib_subset(), r.method, iters=r.iters, round_weight=r.round_weight,
                                          block_size=r.block_size, seed=cfg.seed, lr=r.lr, learn_act=r.act,
                                          act_lr=r.act_lr, round_norm=r.round_norm, drop=r.drop)


def stage_finetune(st: QuantRun) -> None:
    """With a KD config: step sizes, biases and (unless finetune_weights is frozen) weights fine-tuned to the FP32
    model's logits on the calibration source."""
    if st.kd is None or st.kd.steps == 0:
        return
    from .qat import finetune_quantized_

    st.info["finetune"] = finetune_quantized_(_q(st), st.model, st.calib, st.kd, val=st.val, progress=st.progress,
                                              weights=st.config.finetune.weights)


def _q(st: QuantRun) -> nn.Module:
    if st.qmodel is None:
        raise RuntimeError("the fold stage must run first")
    return st.qmodel


STAGES: list[tuple[str, Stage]] = [("fold", stage_fold), ("weight_scales", stage_weight_scales),
                                   ("calibrate", stage_calibrate), ("bias_correct", stage_bias_correct),
                                   ("bn_reestimate", stage_bn_reestimate),
                                   ("reconstruct", stage_reconstruct), ("finetune", stage_finetune)]


def with_stage(name: str, fn: Stage, after: str, stages: Optional[list[tuple[str, Stage]]] = None) -> list[tuple[str, Stage]]:
    """A copy of the stage list (default: STAGES) with `fn` inserted as `name` after the stage `after`."""
    base = list(STAGES if stages is None else stages)
    names = [n for n, _ in base]
    if after not in names:
        raise DatafreeError(f"no quantization stage {after!r}; stages: {', '.join(names)}")
    base.insert(names.index(after) + 1, (name, fn))
    return base


def quantize(model: nn.Module, calib: SourceLike, config: Optional[QuantConfig] = None,
             bn_data: Optional[SourceLike] = None, kd: Optional[KDConfig] = None, val: Optional[TensorData] = None,
             progress: bool = False, stages: Optional[list[tuple[str, Stage]]] = None) -> nn.Module:
    """Return a fake-quantized copy of `model` built by the named stages (fold, weight scales, calibrate, BN
    re-estimation, fine-tune) from any data source; the model is not changed."""
    st = QuantRun(model, config or QuantConfig(), calib, bn_data, kd, val, progress)
    for _, fn in (STAGES if stages is None else stages):
        fn(st)
    qm = _q(st)
    rec = record_of(qm)
    rec.reports["quantize"] = {k: v for k, v in st.info.items() if not k.startswith("_")}
    record_transform(qm, "quantize", st.config, plan=rec.quant_plan,
                     act_quant=[q.act_quant for q in quant_layers(qm)], layout=layout_of(qm), sub8_own_range=True,
                     tensor_quant=[q.act_quant for q in tensor_quants(qm, own_only=True)],
                     stages=[n for n, _ in (STAGES if stages is None else stages)],
                     kd=st.kd.to_dict() if st.kd is not None else None)
    return qm.eval()


def _apply(model: nn.Module, data: Optional[SourceLike], config: QuantConfig, **kw: object) -> nn.Module:
    if data is None:
        raise DatafreeError("quantize needs calibration data (a synthetic set, method or dataset spec)")
    return quantize(model, data, config, **kw)  # type: ignore[arg-type]


def _rebuild(model: nn.Module, t: dict, state_dict: dict) -> nn.Module:
    """Wrap the planned layers (BN folded away) and restore which inputs are quantized; values come from the state dict."""
    model = copy.deepcopy(model)
    for e in t["plan"]:  # values come from the state dict; only shapes matter (a pruned base has fewer channels)
        if e.get("bn"):
            bn, n = model.get_submodule(e["bn"]), model.get_submodule(e["name"]).weight.shape[0]
            if bn.num_features != n:
                set_module(model, e["bn"], type(bn)(n, eps=bn.eps).to(bn.running_mean.device))
    wrap_layers_(model, t["plan"])
    rec = record_of(model)
    rec.quant_plan, rec.quant_config = t["plan"], QuantConfig.from_dict(t["config"])
    # files before the fused layout: inputs only; before sub8_own_range: sub-8-bit readers shared their grid
    model = apply_layout(model, t.get("layout", "inputs"), sub8_own_range=bool(t.get("sub8_own_range", False)))
    for q, on in zip(quant_layers(model), t["act_quant"]):
        q.act_quant = bool(on)
    own = tensor_quants(model, own_only=True)
    if "tensor_quant" in t and len(t["tensor_quant"]) != len(own):
        raise DatafreeError(f"tensor_quant has {len(t['tensor_quant'])} entries for the {len(own)} quantized tensors "
                            "of this model")
    for q, on in zip(own, t.get("tensor_quant", [])):
        q.act_quant = bool(on)
    return model


def _check(s: Schema, model: nn.Module, t: dict, field: str) -> None:
    """A stored quantize record: a plan of conv/linear layers (and BNs) the model has, valid bits, one flag per layer."""
    plan = s.get(t, "plan", list, field)
    for i, e in enumerate(plan):
        f = f"{field}.plan[{i}]"
        s.mapping(e, f)
        layer = submodule(s, model, s.get(e, "name", str, f), f + ".name")
        if not isinstance(layer, (nn.Conv2d, nn.Linear)):
            s.fail(f + ".name", f"names a {type(layer).__name__}, not a convolution or linear layer")
        bn = s.get(e, "bn", (str, type(None)), f, required=False)
        if bn is not None and not isinstance(submodule(s, model, bn, f + ".bn"), nn.modules.batchnorm._BatchNorm):
            s.fail(f + ".bn", f"names {bn!r}, which is not a BatchNorm layer")
        for k in ("w_bits", "a_bits"):
            if not _bits_ok(s.number(e, k, f)):
                s.fail(f"{f}.{k}", f"must be 2-8 or {FLOAT_BITS}, got {e[k]}")
    for key in ("act_quant", "tensor_quant"):
        s.items(t, key, bool, field, required=key == "act_quant")
    if len(t["act_quant"]) != len(plan):
        s.fail(f"{field}.act_quant", f"has {len(t['act_quant'])} entries for {len(plan)} planned layers")
    layout = s.get(t, "layout", str, field, required=False)
    if layout is not None and layout not in LAYOUTS:
        s.fail(f"{field}.layout", f"must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    s.get(t, "sub8_own_range", bool, field, required=False)


register_compressor("quantize", QuantConfig, _apply, _rebuild,
                    "fold BN, per-channel weights and per-tensor inputs on a b-bit grid, calibrated on a source", _check)
