import json
import subprocess
import sys

import pytest
import torch

from datafree.cli import main

NO_BN = '''
import torch.nn as nn
INPUT_SHAPE, MEAN, STD, NUM_CLASSES = (1, 8, 8), (0.3,), (0.38,), 10
def make():
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(144, 10))
'''


def run(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, err, *needles):
    assert code != 0
    lines = [l for l in err.strip().splitlines() if l.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for n in needles:
        assert n in lines[0], lines[0]


def test_bn_stats_on_model_without_bn(tmp_path, capsys):
    f = tmp_path / "nobn.py"
    f.write_text(NO_BN)
    code, _, err = run(capsys, "synthesize", f"{f}:make", "--method", "bn-stats", "--num", 4, "--out", tmp_path / "o")
    assert_one_line_error(code, err, "BatchNorm", "gaussian", "inception")


def test_user_model_with_gaussian_works(tmp_path, capsys):
    f = tmp_path / "nobn.py"
    f.write_text(NO_BN)
    code, out, err = run(capsys, "synthesize", f"{f}:make", "--method", "gaussian", "--num", 6, "--out", tmp_path / "o", "--json")
    assert code == 0, err
    assert json.loads(out)["num"] == 6


def test_weights_errors(tmp_path, capsys):
    missing = tmp_path / "nope.pt"
    code, _, err = run(capsys, "evaluate", "small_cnn", "--weights", missing, "--data", "digits:test")
    assert_one_line_error(code, err, "not found")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"\x80\x03garbage" * 10)
    code, _, err = run(capsys, "evaluate", "small_cnn", "--weights", corrupt, "--data", "digits:test")
    assert_one_line_error(code, err, "corrupt")
    other = tmp_path / "lenet.pt"
    from datafree import create_model

    torch.save(create_model("lenet5").state_dict(), other)
    code, _, err = run(capsys, "evaluate", "small_cnn", "--weights", other, "--data", "digits:test")
    assert_one_line_error(code, err, "do not fit")


def test_unknown_names_and_bits(tmp_path, capsys):
    code, _, err = run(capsys, "quantize", "resnet21", "--calib", "gaussian", "--out", tmp_path / "q.pt")
    assert_one_line_error(code, err, "unknown model", "resnet20")
    code, _, err = run(capsys, "quantize", "small_cnn", "--calib", "gaussian", "--w-bits", 1, "--out", tmp_path / "q.pt")
    assert_one_line_error(code, err, "w-bits", "2 and 8")
    code, _, err = run(capsys, "quantize", "small_cnn", "--calib", "gaussian", "--a-bits", 16, "--out", tmp_path / "q.pt")
    assert_one_line_error(code, err, "a-bits")
    code, _, err = run(capsys, "quantize", "small_cnn", "--calib", tmp_path / "no_such_dir", "--out", tmp_path / "q.pt")
    assert_one_line_error(code, err, "not found", "datafree synthesize")
    code, _, err = run(capsys, "quantize", "small_cnn", "--calib", "magic", "--out", tmp_path / "q.pt")
    assert_one_line_error(code, err, "unknown data source")
    with pytest.raises(SystemExit) as e:  # argparse choices for --method
        main(["synthesize", "small_cnn", "--method", "nope", "--out", str(tmp_path / "x")])
    assert e.value.code == 2


def test_corrupt_quantized_file_and_manifest(tmp_path, capsys):
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "manifest.json").write_text("{not json")
    code, _, err = run(capsys, "quantize", "small_cnn", "--calib", tmp_path / "s", "--out", tmp_path / "q.pt")
    assert_one_line_error(code, err, "corrupt")


def test_wrong_input_shape_is_one_line(tmp_path, capsys):
    f = tmp_path / "m.py"
    f.write_text(NO_BN.replace("(1, 8, 8)", "(1, 12, 12)"))
    code, _, err = run(capsys, "synthesize", f"{f}:make", "--method", "gaussian", "--num", 2, "--out", tmp_path / "o")
    assert_one_line_error(code, err, "input spec", "(1, 12, 12)")


def test_console_script_help_and_error_exit():
    r = subprocess.run([sys.executable, "-m", "datafree", "quantize", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "--calib" in r.stdout and "default: 512" in r.stdout
    assert "(default: None)" not in r.stdout and "(default: False)" not in r.stdout  # only defaults that say something
    assert "(default: 0)" in r.stdout  # --seed: a zero default is still shown
    r = subprocess.run([sys.executable, "-m", "datafree", "evaluate", "small_cnn", "--data", "nope:test"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "unknown dataset spec" in r.stderr


def test_bn_weight_reaches_the_stored_config(tmp_path, capsys):
    from datafree.data.synthetic import read_manifest

    for extra, want in (([], 1.0), (["--bn-weight", 3], 3.0)):
        out = tmp_path / f"o{want}"
        code, stdout, err = run(capsys, "synthesize", "small_cnn", "--method", "deepinversion", "--num", 4,
                                "--iterations", 2, "--out", out, "--no-progress", "--json", *extra)
        assert code == 0, err
        assert read_manifest(out)["config"]["bn_weight"] == want
        info = json.loads(stdout)
        assert info["config"]["bn_weight"] == want and 0 <= info["target_agreement"] <= 100
