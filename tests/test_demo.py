from datafree.demo import run_demo


def test_demo_runs_and_reports_every_source(tmp_path, capsys):
    rows = run_demo(out=str(tmp_path), progress=False, num=64, iterations=10)
    assert [r["source"].split(" calibrated on ")[-1] for r in rows[1:]] == ["real digits:train", "gaussian", "inception", "bn-stats"]
    assert rows[0]["top1"] > 90
    assert all(0 <= r["top1"] <= 100 for r in rows)
    assert (tmp_path / "synthetic_bn-stats" / "grid.png").is_file() and (tmp_path / "demo_results.json").is_file()
    out = capsys.readouterr().out
    assert "W4A4 calibrated on bn-stats" in out
    # the cached teacher is reused on a second run
    assert (tmp_path / "small_cnn_digits.pt").is_file()
