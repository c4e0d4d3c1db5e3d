import numpy as np
import pytest
import torch

import datafree as df
from datafree.cli import main

pytest.importorskip("onnxruntime")
from datafree.compressors.quant.export import SyntheticCalibrationReader, export_onnx, ort_predict, ort_session  # noqa: E402
from datafree.models.record import record_of


@pytest.mark.parametrize("bits", [8, 4])
def test_onnxruntime_matches_simulation(digits_teacher, digits_test, tmp_path, bits):
    m, _ = digits_teacher
    real = df.load_dataset("digits:train", record_of(m).input_spec)
    q = df.quantize(m, real, df.QuantConfig(w_bits=bits, a_bits=bits, quantize_first_last=True))
    path = export_onnx(q, tmp_path / "q.onnx")
    import onnx

    g = onnx.load(str(path)).graph
    ops = {n.op_type for n in g.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    int8 = [i for i in g.initializer if i.data_type == onnx.TensorProto.INT8]
    assert len(int8) == 4  # one int8 weight tensor per quantized layer
    sess = ort_session(path)
    x = digits_test.x[:64]
    logits_ort = sess.run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        logits_sim = q(x).numpy()
    # different conv arithmetic can flip a rounding decision at a bin edge: tiny on average, bounded at worst
    scale = max(1.0, np.abs(logits_sim).max())
    assert np.abs(logits_ort - logits_sim).mean() < 1e-3 * scale
    assert np.abs(logits_ort - logits_sim).max() < 2e-2 * scale
    if bits < 8:  # Max/Min + Q/DQ reproduces narrow grids exactly, whatever onnxruntime's graph optimizations do
        assert np.abs(logits_ort - logits_sim).max() < 1e-4 * scale
    agree = (ort_predict(sess, digits_test) == df.predict(q, digits_test)).float().mean().item()
    assert agree >= 0.995


def test_fp32_export_and_calibration_reader(digits_teacher, tmp_path):
    m, _ = digits_teacher
    p = export_onnx(m, tmp_path / "fp.onnx")
    q = df.quantize(m, df.load_dataset("digits:train", record_of(m).input_spec), df.QuantConfig())
    q8 = export_onnx(q, tmp_path / "q8.onnx")
    assert q8.stat().st_size < 0.4 * p.stat().st_size  # int8 weights, no float copies left behind
    syn = df.synthesize(m, "gaussian", df.make_config("gaussian", num=20), out=str(tmp_path / "g"), progress=False)
    r = SyntheticCalibrationReader(tmp_path / "g", batch_size=8)
    shapes = []
    while (b := r.get_next()) is not None:
        shapes.append(b["input"].shape)
    assert shapes == [(8, 1, 8, 8), (8, 1, 8, 8), (4, 1, 8, 8)]
    r.rewind()
    from onnxruntime.quantization import QuantType, quantize_static

    quantize_static(str(p), str(tmp_path / "ort_q.onnx"), r, weight_type=QuantType.QInt8)
    out = ort_session(tmp_path / "ort_q.onnx").run(None, {"input": syn.x[:4].numpy()})[0]
    assert out.shape == (4, 10) and np.isfinite(out).all()


def test_cli_export_check(digits_teacher, tmp_path, capsys):
    _, w = digits_teacher
    q = tmp_path / "q.pt"
    assert main(["quantize", "small_cnn", "--weights", w, "--calib", "digits:train", "--out", str(q)]) == 0
    capsys.readouterr()
    assert main(["export", str(q), "--out", str(tmp_path / "q.onnx"), "--check", "digits:test", "--json"]) == 0
    import json

    r = json.loads(capsys.readouterr().out)
    assert abs(r["top1_ort"] - r["top1_sim"]) <= 0.3 and r["prediction_agreement"] >= 99.5


def test_cli_export_check_reports_latency_size_and_integer_kernels(digits_teacher, tmp_path, capsys):
    _, w = digits_teacher
    q = tmp_path / "q.pt"
    assert main(["quantize", "small_cnn", "--weights", w, "--calib", "digits:train", "--out", str(q)]) == 0
    capsys.readouterr()
    assert main(["export", str(q), "--out", str(tmp_path / "q.onnx"), "--check", "digits:test", "--reps", "3",
                 "--latency-batch", "16", "--json"]) == 0
    import json

    r = json.loads(capsys.readouterr().out)
    assert set(r["latency"]) == {"b1_t1", "b16_t2"}
    for v in r["latency"].values():
        assert v["ms"] > 0 and v["fp32_ms"] > 0 and abs(v["ratio"] - v["ms"] / v["fp32_ms"]) < 0.01
    assert r["bytes"] == (tmp_path / "q.onnx").stat().st_size and r["size_ratio"] < 0.4
    # small_cnn: 3 convs, max-pool, global pooling and the head, all on integer kernels
    assert r["integer_ops"].get("QLinearConv") == 3 and r["integer_ops"].get("QGemm") == 1, r
    assert not r["float_ops"].get("Conv") and not r["float_ops"].get("FusedConv"), r


def test_cli_export_calibrate_with_onnxruntime(digits_teacher, tmp_path, capsys):
    _, w = digits_teacher
    out = tmp_path / "ort.onnx"
    assert main(["export", "small_cnn", "--weights", w, "--calibrate-with", "onnxruntime", "--calib", "digits:train",
                 "--num-calib", "64", "--out", str(out), "--check", "digits:test", "--reps", "2", "--json"]) == 0
    import json

    r = json.loads(capsys.readouterr().out)
    assert r["calibrate_with"] == "onnxruntime" and r["prediction_agreement"] >= 95.0
    assert r["integer_ops"].get("QLinearConv", 0) >= 1
    # a quantized file carries its own numbers: handing it to onnxruntime's quantizer is refused in one line
    q = tmp_path / "q.pt"
    assert main(["quantize", "small_cnn", "--weights", w, "--calib", "digits:train", "--out", str(q)]) == 0
    capsys.readouterr()
    assert main(["export", str(q), "--calibrate-with", "onnxruntime", "--calib", "digits:train",
                 "--out", str(tmp_path / "x.onnx")]) == 2
    err = capsys.readouterr().err
    assert "FP32 model" in err and len(err.strip().splitlines()) == 1
    assert main(["export", "small_cnn", "--weights", w, "--calibrate-with", "onnxruntime",
                 "--out", str(tmp_path / "y.onnx")]) == 2
    assert "--calib" in capsys.readouterr().err
