"""ONNX export with QuantizeLinear/DequantizeLinear, and synthetic sets as onnxruntime calibration data."""
from __future__ import annotations

import copy
import dataclasses
import os
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np
import torch
import torch.nn as nn

from ...core.errors import DatafreeError
from ...core.utils import top1
from ...data.base import TensorData
from ...models.record import record_of
from .graph import act_quantizers, float_twin, int8_activations_, tensor_quants
from .layers import FLOAT_BITS
from .ptq import quant_layers


def _export_forward(self, x: torch.Tensor) -> torch.Tensor:
    """QuantLayer forward built from ops the ONNX exporter maps to Q/DQ pairs (same numbers as the simulation)."""

    if self.act_quant and self.a_bits < FLOAT_BITS and not (self.input_shared and self.a_bits == 8):
        s, z = float(self.a_scale), int(round(float(self.a_zero)))
        if self.a_bits < 8:
            # narrower grid = the uint8 grid of the same step, clipped to the b-bit codes: quantize (so the producer's
            # DQ -> op -> Q fuses), clip, quantize again (so this layer's DQ -> Conv fuses). Max/Min rather than Clip:
            # onnxruntime's Clip+QuantizeLinear fusion would drop a Clip before Q/DQ.
            if not self.input_shared:
                x = torch.fake_quantize_per_tensor_affine(x, s, z, 0, 255)
            x = torch.minimum(torch.maximum(x, torch.tensor((0 - z) * s)), torch.tensor((2 ** self.a_bits - 1 - z) * s))
        x = torch.fake_quantize_per_tensor_affine(x, s, z, 0, 255)
    w = self.weight
    if self.w_bits < FLOAT_BITS:
        wq = self._export_wq  # constant, already on the b-bit grid, which the int8 grid contains
        w = torch.fake_quantize_per_channel_affine(wq, self._export_scale,
                                                   torch.zeros_like(self.w_scale, dtype=torch.int32), 0, -128, 127)
    b = self._export_bias  # on the int32 grid when int_bias is on; the file stores it as int32 (see _int32_biases)
    return self.op(x, w, b)


INT32_BIAS_LIMIT = 2 ** 30  # |bias| / (input scale · weight scale) stays below this (int32, with a margin)


@torch.no_grad()
def _int32_safe(q) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The quantized weight, per-channel weight scale and bias the file stores. A channel whose bias would not fit the
    int32 grid of input scale x weight scale (a dead channel: weights ~1e-8, bias of a few units) gets a coarser weight
    scale, so that it fits; its weights, already negligible, round to ~0. Integer kernels would otherwise overflow there
    (onnxruntime quantizes such a bias itself when fusing and wraps it)."""
    wq, scale, b = q.quant_weight().detach().clone(), q.w_scale.detach().float().clone(), q.quant_bias().detach().clone()
    if q.w_bits >= FLOAT_BITS or not q.act_quant or q.a_bits >= FLOAT_BITS:
        return wq, scale, b
    floor = b.abs().float() / (float(q.a_scale) * INT32_BIAS_LIMIT)
    grow = scale < floor
    if grow.any():
        scale = torch.where(grow, floor, scale)
        shape = (-1,) + (1,) * (wq.dim() - 1)
        s = scale.view(shape).to(wq.dtype)
        wq = torch.where(grow.view(shape), torch.clamp(torch.round(wq / s), -128, 127) * s, wq)
        if q.bias_scale() is not None:
            step = (q.a_scale * scale).to(b.dtype)
            b = torch.where(grow, torch.round(b / step) * step, b)
    return wq, scale, b


def _export_tensor_quant(self, x: torch.Tensor) -> torch.Tensor:
    """TensorQuant forward as one QuantizeLinear/DequantizeLinear pair on the uint8 grid."""
    p = self.params()
    if p is None:
        return x
    return torch.fake_quantize_per_tensor_affine(x, float(p[0]), int(round(float(p[1]))), 0, 255)


def _int8_weight_initializers(path: Path) -> None:
    """Replace QuantizeLinear nodes fed by float initializers with int8 initializers (4x smaller files)."""
    import onnx
    from onnx import numpy_helper

    m = onnx.load(str(path))
    g = m.graph
    inits = {i.name: i for i in g.initializer}
    consts = {n.output[0]: n for n in g.node if n.op_type == "Constant"}

    def value(name):
        if name in inits:
            return numpy_helper.to_array(inits[name])
        if name in consts:
            return numpy_helper.to_array(consts[name].attribute[0].t)
        return None

    keep = []
    for node in g.node:
        if node.op_type == "QuantizeLinear":
            x, s = value(node.input[0]), value(node.input[1])
            zp = value(node.input[2]) if len(node.input) > 2 else None
            if x is not None and s is not None and zp is not None:
                axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
                shape = [1] * x.ndim
                if s.ndim == 1 and x.ndim > 1:
                    shape[axis] = -1
                q = np.clip(np.round(x / s.reshape(shape)) + zp.reshape(shape).astype(np.float64), np.iinfo(zp.dtype).min,
                            np.iinfo(zp.dtype).max).astype(zp.dtype)
                g.initializer.append(numpy_helper.from_array(q, node.output[0]))
                continue
        keep.append(node)
    outputs = {o.name for o in g.output}
    while True:  # drop Constant nodes (e.g. the float weights) nothing reads any more
        used = {i for n in keep for i in n.input} | outputs
        dead = [n for n in keep if n.op_type == "Constant" and n.output[0] not in used]
        if not dead:
            break
        keep = [n for n in keep if n not in dead]
    del g.node[:]
    g.node.extend(keep)
    used = {i for n in g.node for i in n.input}
    unused = [i for i in g.initializer if i.name not in used and i.name not in {o.name for o in g.output}]
    for i in unused:
        g.initializer.remove(i)
    onnx.checker.check_model(m)
    onnx.save(m, str(path))


def _int32_biases(path: Path) -> int:
    """Store each Conv/Gemm bias that follows a DequantizeLinear input and int8 weight as int32 with scale
    s_input · s_weight behind a DequantizeLinear (the layout onnxruntime fuses into integer kernels); returns how many."""
    import onnx
    from onnx import helper, numpy_helper

    m = onnx.load(str(path))
    g = m.graph
    inits = {i.name: i for i in g.initializer}
    producer = {o: n for n in g.node for o in n.output}

    consts = {n.output[0]: n for n in g.node if n.op_type == "Constant"}

    def const(name: str) -> Optional[np.ndarray]:
        if name in inits:
            return numpy_helper.to_array(inits[name])
        return numpy_helper.to_array(consts[name].attribute[0].t) if name in consts else None

    done, new_nodes = 0, []
    for node in g.node:
        if node.op_type not in ("Conv", "Gemm") or len(node.input) < 3 or const(node.input[2]) is None:
            continue
        dx, dw = producer.get(node.input[0]), producer.get(node.input[1])
        if dx is None or dw is None or dx.op_type != "DequantizeLinear" or dw.op_type != "DequantizeLinear":
            continue
        if node.op_type == "Gemm" and any(a.name == "transB" and a.i == 0 for a in node.attribute):
            continue
        sx, sw, b = const(dx.input[1]), const(dw.input[1]), const(node.input[2])
        if sx is None or sw is None or sx.size != 1:
            continue
        scale = (np.float32(sx.reshape(())) * sw.astype(np.float32)).astype(np.float32).reshape(-1)
        if scale.size == 1:
            scale = np.full(b.shape, scale[0], dtype=np.float32)
        q = np.round(b.astype(np.float32) / scale).astype(np.int64)
        if np.abs(q).max(initial=0) >= 2 ** 31:
            continue  # out of int32 range (export_onnx coarsens such channels first, so not from a QuantLayer): float bias
        base = node.input[2]
        base = base.replace("/", "_").strip("_") if base in consts else base
        g.initializer.extend([numpy_helper.from_array(q.astype(np.int32), base + "_int32"),
                              numpy_helper.from_array(scale, base + "_int32_scale"),
                              numpy_helper.from_array(np.zeros(b.shape, np.int32), base + "_int32_zero")])
        out = base + "_dq"
        new_nodes.append(helper.make_node("DequantizeLinear", [base + "_int32", base + "_int32_scale", base + "_int32_zero"],
                                          [out], name=base + "_DequantizeLinear", axis=0))
        node.input[2] = out
        done += 1
    if not done:
        return 0
    nodes = new_nodes + list(g.node)  # constants first: the graph stays topologically sorted
    used = {i for n in nodes for i in n.input} | {o.name for o in g.output}
    del g.node[:]
    g.node.extend(n for n in nodes if n.op_type != "Constant" or n.output[0] in used)  # the float biases go
    for i in [i for i in g.initializer if i.name not in used]:
        g.initializer.remove(i)
    onnx.checker.check_model(m)
    onnx.save(m, str(path))
    return done


def export_onnx(model: nn.Module, path: str | os.PathLike, opset: int = 13) -> Path:
    """Write `model` (quantized -> Q/DQ int8 graph; plain -> FP32 graph) as one ONNX file with a dynamic batch."""
    try:
        import onnx  # noqa: F401
    except ImportError:
        raise DatafreeError("ONNX export needs the onnx package: pip install 'datafree[export]'") from None
    spec = record_of(model).input_spec
    if spec is None:
        raise DatafreeError("model has no input_spec; cannot build the export input")
    m = copy.deepcopy(model).eval().cpu()
    layers = quant_layers(m)
    for q in layers:
        q._export_wq, q._export_scale, q._export_bias = _int32_safe(q)
        q.forward = _export_forward.__get__(q)  # export-only copy; the caller's model is untouched
    for t in tensor_quants(m):
        t.forward = _export_tensor_quant.__get__(t)
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    dummy = torch.zeros(1, *spec.shape)
    import warnings

    with torch.no_grad(), warnings.catch_warnings():
        # the tracer's notes (Python floats of scales become constants, slices not folded) are expected here
        warnings.simplefilter("ignore")
        torch.onnx.export(m, (dummy,), str(p), dynamo=False, opset_version=opset, input_names=["input"],
                          output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                          do_constant_folding=True)
    if layers:
        _int8_weight_initializers(p)
        if any(q.int_bias for q in layers):
            _int32_biases(p)
    return p


def ort_session(path: str | os.PathLike, threads: Optional[int] = None):
    """An onnxruntime CPU session for an exported file."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise DatafreeError("running ONNX models needs onnxruntime: pip install 'datafree[export]'") from None
    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def ort_predict(session, data: TensorData, batch_size: int = 256) -> torch.Tensor:
    """Argmax predictions of an onnxruntime session on `data`."""
    name = session.get_inputs()[0].name
    out = [session.run(None, {name: xb.numpy().astype(np.float32)})[0].argmax(1) for xb in data.batches(batch_size)]
    return torch.from_numpy(np.concatenate(out))


def optimized_ops(path: str | os.PathLike) -> dict[str, int]:
    """Op counts of the graph onnxruntime actually runs (after its CPU graph optimizations and QDQ fusions)."""
    import collections
    import tempfile

    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as d:
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        so.optimized_model_filepath = str(Path(d) / "opt.onnx")
        so.log_severity_level = 3  # the "hardware specific optimizations" notice is not for users
        ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        return dict(collections.Counter(n.op_type for n in onnx.load(so.optimized_model_filepath).graph.node))


INTEGER_OPS = ("QLinearConv", "QLinearAdd", "QGemm", "QLinearMatMul", "QLinearGlobalAveragePool", "QLinearAveragePool",
               "QLinearMul", "QLinearConcat", "QLinearSigmoid", "QLinearLeakyRelu", "ConvInteger", "MatMulInteger")
FLOAT_COMPUTE_OPS = ("Conv", "FusedConv", "Gemm", "MatMul", "FusedGemm", "FusedMatMul", "Add", "GlobalAveragePool",
                     "AveragePool")


def median_latency(session, x: np.ndarray, reps: int = 20) -> float:
    """Median seconds of one run of `session` on batch x (after one warm-up run)."""
    import statistics
    import time

    name = session.get_inputs()[0].name
    for _ in range(5):  # thread pool, memory arena and caches warm up over the first runs
        session.run(None, {name: x})
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        session.run(None, {name: x})
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def check_export(path: str | os.PathLike, model: nn.Module, data: Optional[TensorData] = None,
                 fp32_path: Optional[str | os.PathLike] = None, batch: int = 64, threads: int = 2,
                 reps: int = 20) -> dict:
    """What a user of the exported file gets: top-1 against the PyTorch model on `data`, latency against an FP32 export
    of the same graph in this process (batch 1 / 1 thread and `batch` / `threads`), file sizes, fused node counts."""
    import tempfile

    path = Path(path)
    info: dict = {"bytes": path.stat().st_size}
    spec = record_of(model).input_spec
    with tempfile.TemporaryDirectory() as d:
        fp = Path(fp32_path) if fp32_path is not None else export_onnx(float_twin(model).eval().cpu(), Path(d) / "fp32.onnx")
        info["bytes_fp32"] = fp.stat().st_size
        info["size_ratio"] = round(info["bytes"] / info["bytes_fp32"], 3)
        ops = optimized_ops(path)
        info["integer_ops"] = {k: v for k, v in sorted(ops.items()) if k in INTEGER_OPS}
        info["float_ops"] = {k: v for k, v in sorted(ops.items()) if k in FLOAT_COMPUTE_OPS}
        if data is not None:
            from ...core.utils import predict

            sim = predict(model, data)
            ort = ort_predict(ort_session(path), data)
            info.update(top1_sim=round(100.0 * (sim == data.y).float().mean().item(), 3),
                        top1_ort=round(100.0 * (ort == data.y).float().mean().item(), 3),
                        prediction_agreement=round(100.0 * (sim == ort).float().mean().item(), 3), n=len(data))
        shape = tuple(spec.shape) if spec is not None else tuple(data.x.shape[1:])  # type: ignore[union-attr]
        rng = np.random.default_rng(0)
        lat = {}
        for b, t in ((1, 1), (batch, threads)):
            x = (data.x[:b].numpy() if data is not None and len(data) >= b else rng.standard_normal((b, *shape))).astype(np.float32)
            s_q, s_f = ort_session(path, threads=t), ort_session(fp, threads=t)
            tq, tf = [], []
            n = reps * (5 if b == 1 else 1)  # batch 1 is a fraction of a millisecond: more runs for a stable median
            for _ in range(5):  # interleaved rounds, best median of each: both files see the same machine state
                tf.append(median_latency(s_f, x, n))
                tq.append(median_latency(s_q, x, n))
            q_ms, f_ms = 1000 * min(tq), 1000 * min(tf)
            lat[f"b{b}_t{t}"] = {"batch": b, "threads": t, "ms": round(q_ms, 4), "fp32_ms": round(f_ms, 4),
                                 "ratio": round(q_ms / f_ms, 3)}
        info["latency"] = lat
    return info


def ort_quantize_static(fp32_path: str | os.PathLike, out: str | os.PathLike, calib: TensorData,
                        per_channel: bool = True, batch_size: int = 16) -> Path:
    """onnxruntime's own static quantizer (QDQ, uint8 activations, int8 per-channel weights) on an FP32 export, with
    `calib` (synthetic or real samples) as its calibration reader."""
    import tempfile

    try:
        from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError:
        raise DatafreeError("onnxruntime's quantizer needs onnxruntime: pip install 'datafree[export]'") from None
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as d:
        pre = Path(d) / "pre.onnx"
        quant_pre_process(str(fp32_path), str(pre))  # folds constants, so biases are initializers it can quantize
        import logging

        level = logging.getLogger().level
        logging.getLogger().setLevel(logging.ERROR)  # its per-node warnings are about its own heuristics
        try:
            quantize_static(str(pre), str(out), SyntheticCalibrationReader(calib, batch_size=batch_size),
                            quant_format=QuantFormat.QDQ, per_channel=per_channel,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
        finally:
            logging.getLogger().setLevel(level)
    return out


class SyntheticCalibrationReader:
    """onnxruntime.quantization CalibrationDataReader over a SyntheticSet (or any TensorData)."""

    def __init__(self, source: "str | os.PathLike | TensorData", input_name: str = "input", batch_size: int = 16) -> None:
        if isinstance(source, TensorData):
            self.data = source
        else:
            from ...data.synthetic import SyntheticSet

            self.data = SyntheticSet(source).data
        self.input_name = input_name
        self.batch_size = batch_size
        self._it: Optional[Iterator[torch.Tensor]] = None
        self.rewind()

    def get_next(self) -> Optional[dict]:
        """The next {input_name: float32 batch}, or None when exhausted."""
        xb = next(self._it, None)  # type: ignore[arg-type]
        return None if xb is None else {self.input_name: xb.numpy().astype(np.float32)}

    def rewind(self) -> None:
        """Start again from the first batch."""
        self._it = iter(self.data.batches(self.batch_size))


@dataclasses.dataclass
class ExportOptions:
    """How `export_model` writes and checks an ONNX file."""

    opset: int = 13
    int8_activations: bool = False  # sub-8-bit activation grids shipped on the int8 grid of the same clipped range
    calibrate_with: str = "datafree"  # datafree: the file's own numbers; onnxruntime: quantize_static on `calib`
    num_calib: int = 512
    latency_batch: int = 64
    ort_threads: int = 2
    reps: int = 20

    def validate(self, model: nn.Module, calib: Optional[str] = "given") -> None:
        """Refuse combinations that cannot work, before any work."""
        if self.opset < 13:
            raise DatafreeError(f"--opset {self.opset} is too old: per-channel QuantizeLinear/DequantizeLinear need "
                                "opset >= 13")
        for k in ("latency_batch", "ort_threads", "reps"):
            if getattr(self, k) < 1:
                raise DatafreeError(f"--{k.replace('_', '-')} must be >= 1, got {getattr(self, k)}")
        quantized = bool(quant_layers(model))
        if self.calibrate_with == "onnxruntime":
            if self.int8_activations:
                raise DatafreeError("--int8-activations widens a datafree-quantized file's grids; onnxruntime's "
                                    "quantizer is 8-bit already: drop one of the two options")
            if quantized:
                raise DatafreeError("--calibrate-with onnxruntime quantizes an FP32 model; give the FP32 model, not a "
                                    "quantized file (or drop --calibrate-with to export the file's own numbers)")
            if not calib:
                raise DatafreeError("--calibrate-with onnxruntime needs --calib: a synthetic set, a method or a dataset "
                                    "spec")
            if self.num_calib < 1:
                raise DatafreeError(f"--num-calib must be >= 1, got {self.num_calib}")
        elif self.int8_activations and not quantized:
            raise DatafreeError("--int8-activations applies to a quantized file (from `datafree quantize`), not an FP32 "
                                "model")


def export_model(model: nn.Module, out: str | Path, opts: Optional[ExportOptions] = None, calib: Optional[Any] = None,
                 check: Optional[Any] = None, calib_name: Optional[str] = None) -> dict:
    """Write `model` as ONNX as `opts` say (its own numbers, or onnxruntime's quantizer on `calib`) and, with `check`
    (real data), measure what the file gives; returns the report (out, bytes, kind, and the check's numbers)."""
    import tempfile

    opts = opts or ExportOptions()
    opts.validate(model, calib_name or ("given" if calib is not None else None))
    quantized = bool(quant_layers(model))
    original, widened = model, 0
    if opts.calibrate_with == "onnxruntime":
        with tempfile.TemporaryDirectory() as d:
            path = ort_quantize_static(export_onnx(model, Path(d) / "fp32.onnx", opset=opts.opset), out, calib)
        kind = (f"onnxruntime quantize_static (QDQ, per-channel int8) calibrated on {calib_name or 'the given data'} "
                f"({len(calib)} samples)")
    else:
        sub8 = sorted({m.a_bits for m in act_quantizers(model) if m.act_quant and m.a_bits < 8})
        if opts.int8_activations:
            model = copy.deepcopy(model)
            widened = int8_activations_(model)
        path = export_onnx(model, out, opset=opts.opset)
        kind = "int8 QDQ graph with this file's own numbers" if quantized else "FP32 graph"
        if opts.int8_activations:
            kind += (f"; {widened} activation grid(s) of {'/'.join(map(str, sub8))} bits widened to int8 within their "
                     f"clipped ranges" if widened else "; --int8-activations: every activation grid is already 8-bit")
        elif sub8:
            kind += (f" (activations at {'/'.join(map(str, sub8))} bits keep their b-bit clip as float ops: exact, but "
                     f"not int8 speed; --int8-activations ships them on the int8 grid of the same clipped ranges)")
    info: dict[str, Any] = {"out": str(path), "bytes": path.stat().st_size, "calibrate_with": opts.calibrate_with,
                            "kind": kind}
    if opts.int8_activations:
        info["int8_activations"] = widened
    if check is not None:
        info.update(check_export(path, model, check, batch=opts.latency_batch, threads=opts.ort_threads, reps=opts.reps))
        info["reference"] = "FP32 PyTorch model" if not quantized else "PyTorch simulation"
        if widened:
            info["reference"] = "widened PyTorch simulation"
            info["top1_sim_original"] = round(top1(original, check), 2)
    return info


def check_lines(r: dict, data_name: str) -> list[str]:
    """The human lines of an export check report."""
    lines = []
    if "top1_sim_original" in r:
        lines.append(f"{data_name}: top-1 of the b-bit simulation (the file given) {r['top1_sim_original']:.2f}%")
    lines.append(f"{data_name}: top-1 {r['reference']} {r['top1_sim']:.2f}%, onnxruntime {r['top1_ort']:.2f}%, "
                 f"same prediction on {r['prediction_agreement']:.2f}% of {r['n']} images")
    lines.append(f"size: {r['bytes'] / 1024:.1f} KiB vs FP32 export {r['bytes_fp32'] / 1024:.1f} KiB ({r['size_ratio']:.2f}x)")
    for v in r["latency"].values():
        lines.append(f"latency batch {v['batch']}, {v['threads']} thread(s): {v['ms']:.3f} ms vs FP32 {v['fp32_ms']:.3f} "
                     f"ms ({v['ratio']:.2f}x)")
    fused = ", ".join(f"{k} {n}" for k, n in r["integer_ops"].items()) or "none"
    left = ", ".join(f"{k} {n}" for k, n in r["float_ops"].items()) or "none"
    lines.append(f"onnxruntime integer kernels: {fused}; float compute left: {left}")
    return lines
