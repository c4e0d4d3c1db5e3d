import json

import torch

import datafree as df
from datafree.cli import main
from datafree.compressors.quant import quant_layers
from datafree.models.record import record_of
from tests.conftest import measured


def test_fp32_teacher_accuracy_floor(digits_teacher, digits_test):
    # measured in test_bounds.json, 20 runs: 97.2..98.9
    assert measured("teacher.top1", df.evaluate(digits_teacher[0], digits_test)["top1"]) > 93.0


def test_quantize_real_vs_bn_stats_and_first_last(digits_teacher, digits_test):
    m, _ = digits_teacher
    fp = df.evaluate(m, digits_test)["top1"]
    real = df.load_dataset("digits:train", record_of(m).input_spec)
    q8 = df.quantize(m, real, df.QuantConfig(w_bits=8, a_bits=8))
    assert measured("pipeline.w8a8_drop", fp - df.evaluate(q8, digits_test)["top1"]) <= 1.0  # measured in test_bounds.json, 20 runs: -0.56..0.28
    syn = df.synthesize(m, "bn-stats", df.make_config("bn-stats", num=256, iterations=100), progress=False)
    q4 = df.quantize(m, syn, df.QuantConfig(w_bits=4, a_bits=4, quantize_first_last=True))
    bits = [(q.w_bits, q.a_bits) for q in quant_layers(q4)]
    assert bits == [(4, 4)] * 4
    assert measured("pipeline.w4a4_bnstats_drop", fp - df.evaluate(q4, digits_test)["top1"]) < 6.0  # measured in test_bounds.json, 20 runs: -0.83..1.94
    q4d = df.quantize(m, syn, df.QuantConfig(w_bits=4, a_bits=4))
    bits = [(q.w_bits, q.a_bits) for q in quant_layers(q4d)]
    assert bits[0] == (8, 8) and bits[-1] == (8, 8) and bits[1] == (4, 4)
    assert df.model_size_bits(q4) < df.model_size_bits(m) / 6


def test_quantized_file_roundtrip_and_evaluate_json(digits_teacher, digits_test, tmp_path, capsys):
    m, w = digits_teacher
    out = tmp_path / "q.pt"
    code = main(["quantize", "small_cnn", "--weights", w, "--calib", "digits:train", "--w-bits", "4", "--a-bits", "4",
                 "--out", str(out), "--no-progress"])
    assert code == 0
    capsys.readouterr()
    q = df.load_quantized(out)
    direct = df.quantize(m, df.load_dataset("digits:train", record_of(m).input_spec), df.QuantConfig(w_bits=4, a_bits=4))
    assert torch.equal(df.predict(q, digits_test), df.predict(direct, digits_test))
    code = main(["evaluate", str(out), "--data", "digits:test", "--json", "--teacher-weights", w])
    r = json.loads(capsys.readouterr().out)
    assert code == 0 and r["n"] == len(digits_test)
    assert r["top1"] == df.evaluate(direct, digits_test)["top1"] and 0 <= r["agreement"] <= 100


def test_synthesize_cli_writes_set_and_grid(digits_teacher, tmp_path, capsys):
    _, w = digits_teacher
    out = tmp_path / "syn"
    code = main(["synthesize", "small_cnn", "--weights", w, "--method", "bn-stats+inception", "--num", "20",
                 "--iterations", "5", "--batch-size", "8", "--out", str(out), "--no-progress"])
    assert code == 0
    s = df.SyntheticSet(out)
    assert len(s) == 20 and s.manifest["config"]["iterations"] == 5 and s.manifest["complete"]
    assert (out / "grid.png").stat().st_size > 100
    # used as a calibration source
    assert main(["quantize", "small_cnn", "--weights", w, "--calib", str(out), "--out", str(tmp_path / "q.pt")]) == 0
