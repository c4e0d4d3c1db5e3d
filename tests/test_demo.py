import json

from datafree.demo import run_demo
from tests.conftest import measured


def test_demo_runs_and_reports_every_source(tmp_path, capsys):
    rows = run_demo(out=str(tmp_path), progress=False, num=64, iterations=10, kd_steps=5)
    names = ["real digits:train", "gaussian", "inception", "bn-stats"]
    assert [(r["source"], r["stage"]) for r in rows] == [("FP32", "fp32")] + [(n, s) for n in names
                                                                              for s in ("calibrate", "kd-finetune")]
    assert measured("demo.fp32_top1", rows[0]["top1"]) > 90  # measured in test_bounds.json, 20 runs: 96.7..98.9 (ONNX agreement 100 in all)
    assert all(0 <= r["top1"] <= 100 for r in rows)
    for f in ("synthetic_bn-stats/grid.png", "demo_results.png", "demo_results.json", "small_cnn_w8a8.onnx"):
        assert (tmp_path / f).is_file(), f
    out = capsys.readouterr().out
    assert "W2A4 calibrated" in out and "bn-stats" in out and "int8 ONNX" in out
    exp = json.loads((tmp_path / "demo_results.json").read_text())["export"]
    assert measured("demo.onnx_agreement", exp["prediction_agreement"]) >= 95 and exp["integer_ops"].get("QLinearConv", 0) == 3
    # the cached teacher is reused on a second run
    assert (tmp_path / "small_cnn_digits.pt").is_file()
