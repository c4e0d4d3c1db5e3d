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


def test_every_subcommand_help_renders(capsys):
    # argparse formats help texts with %, so a literal "98.1 %" in a config field's help once crashed
    # `synthesize/distill/hash --help` with a ValueError traceback
    from datafree.cli import build_parser

    sub = build_parser()._subparsers._group_actions[0].choices
    assert {"synthesize", "quantize", "distill", "hash", "prune", "extend", "export", "evaluate", "audit"} <= set(sub)
    for name in sub:
        with pytest.raises(SystemExit) as e:
            main([name, "--help"])
        assert e.value.code == 0, name
        out = capsys.readouterr().out
        assert out.startswith("usage: ") and "Traceback" not in out, name


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


def test_an_option_the_method_lacks_is_an_error_naming_it(tmp_path, capsys):
    code, _, err = run(capsys, "synthesize", "small_cnn", "--method", "bn-stats", "--bn-weight", 3, "--num", 4,
                       "--out", tmp_path / "o")
    assert_one_line_error(code, err, "bn-stats", "--bn-weight")
    code, _, err = run(capsys, "distill", "small_cnn", "--student", "small_cnn", "--data", "digits:train",
                       "--bn-weight", 3, "--out", tmp_path / "s.pt")
    assert_one_line_error(code, err, "--bn-weight", "--method")


def test_library_errors_name_the_option_and_the_cli_its_flag(tmp_path, capsys):
    import datafree as df

    with pytest.raises(df.DatafreeError) as e:
        df.KDConfig(lr=-1.0)
    assert e.value.option == "lr" and str(e.value).startswith("lr ")
    code, _, err = run(capsys, "distill", "small_cnn", "--student", "small_cnn", "--data", "digits:train",
                       "--kd-lr", -1, "--out", tmp_path / "s.pt")
    assert_one_line_error(code, err, "--kd-lr must be a positive number")
    code, _, err = run(capsys, "synthesize", "small_cnn", "--method", "gaussian", "--num", -5, "--out", tmp_path / "o")
    assert_one_line_error(code, err, "--num must be >= 1")
    code, _, err = run(capsys, "distill", "small_cnn", "--student", "small_cnn", "--method", "deepinversion",
                       "--synth-lr", 0, "--out", tmp_path / "s.pt")
    assert_one_line_error(code, err, "--synth-lr must be a positive number")


@pytest.mark.parametrize("cmd,preset", [("quantize", "qat"), ("distill", "student"), ("prune", "prune"),
                                        ("extend", "continual")])
def test_cli_kd_defaults_are_the_library_presets(cmd, preset):
    from datafree.cli import _kd_config, build_parser
    from datafree.kd.loop import KDConfig

    req = {"quantize": ["--calib", "x", "--out", "o"], "distill": ["--student", "s", "--data", "d", "--out", "o"],
           "prune": ["--structured", "--sparsity", "0.5", "--out", "o"],
           "extend": ["--new-data", "d", "--new-classes", "5-9", "--out", "o"]}[cmd]
    a = build_parser().parse_args([cmd, "small_cnn", *req])
    assert a._kd_preset == preset
    assert _kd_config(a, 123) == KDConfig.preset(preset, steps=123, seed=0)
    assert KDConfig.preset("student").to_dict() != KDConfig().to_dict()  # the library default is not the student preset


def test_config_versions_round_trip_and_old_dicts_load():
    import datafree as df
    from datafree.kd.loop import KDConfig

    d = KDConfig(lr=3e-3).to_dict()
    assert d["config_version"] == KDConfig.version == 1
    assert KDConfig.from_dict(d) == KDConfig(lr=3e-3)
    old = {k: v for k, v in d.items() if k != "config_version"}  # written before configs carried a version
    assert KDConfig.from_dict(old) == KDConfig(lr=3e-3)
    with pytest.raises(df.DatafreeError, match="newer datafree"):
        KDConfig.from_dict({**d, "config_version": 99})
    # QuantConfig 2 added round_norm (default sum): a version-1 dict reconstructed with the per-weight mean scale;
    # version 3 nests reconstruction, mixed precision and fine-tuning: flat version-2 dicts (files written before) load
    q = df.QuantConfig.from_flat(reconstruct="brecq", recon_iters=40, avg_bits=3.0, finetune_weights="frozen")
    d3 = q.to_dict()
    assert d3["config_version"] == 5 and d3["recon"] == {**d3["recon"], "method": "brecq", "iters": 40, "round_norm": "sum"}
    assert df.QuantConfig.from_dict(d3) == q and q.mixed.avg_bits == 3.0 and q.finetune.weights == "frozen"
    # version 4 added bias_from (default bn): a version-3 dict corrected biases on the samples' own moments
    v3 = {k: v for k, v in d3.items() if k != "bias_from"}
    assert df.QuantConfig.from_dict({**v3, "config_version": 3}) == q.replace(bias_from="samples") != q
    # version 5 added ranges_from auto: a version-4 dict observed activation ranges on the samples as they were
    v4 = {k: v for k, v in d3.items() if k != "ranges_from"}
    assert df.QuantConfig.from_dict({**v4, "config_version": 4}) == q.replace(ranges_from="samples") != q
    assert (q.range_moments(), q.replace(a_bits=4).range_moments(), q.replace(a_bits=4, ranges_from="samples")
            .range_moments()) == ("samples", "bn", "samples")
    v2 = {k: v for k, v in d3.items() if k not in ("recon", "mixed", "finetune")}
    v2.update(reconstruct="brecq", recon_iters=40, recon_lr=0.01, recon_act=True, recon_act_lr=0.02, recon_drop=0.0,
              round_weight=0.01, round_norm="sum", block_size=4, avg_bits=3.0, target_size=0,
              finetune_weights="frozen", config_version=2)
    assert df.QuantConfig.from_dict(v2) == q
    v1 = {k: v for k, v in v2.items() if k not in ("config_version", "round_norm")}
    assert df.QuantConfig.from_dict(v1) == q.replace(round_norm="mean")
    assert q.replace(recon_iters=7).recon.iters == 7 and q.replace(recon_iters=7).recon.method == "brecq"
    with pytest.raises(df.DatafreeError, match="unknown QuantConfig option 'recon_iter'"):
        q.replace(recon_iter=7)


def test_a_set_written_before_config_versions_resumes(digits_teacher, tmp_path, capsys):
    import json as _json

    args = ["synthesize", "small_cnn", "--weights", digits_teacher[1], "--method", "gaussian", "--num", 4,
            "--out", tmp_path / "o"]
    assert run(capsys, *args)[0] == 0
    m = tmp_path / "o" / "manifest.json"
    man = _json.loads(m.read_text())
    del man["config"]["config_version"]
    m.write_text(_json.dumps(man))
    code, _, err = run(capsys, *args)
    assert code == 0, err


def test_freeze_bn_on_a_student_from_scratch_is_flagged(digits_teacher, tmp_path, capsys):
    from datafree.cli import main as cli_main

    w = digits_teacher[1]
    base = ["distill", "small_cnn", "--weights", w, "--student", "small_cnn", "--data", "digits:train", "--steps", "2",
            "--no-progress", "--freeze-bn"]
    assert cli_main(base + ["--out", str(tmp_path / "a.pt")]) == 0
    assert "--freeze-bn keeps a new student's BN statistics" in capsys.readouterr().err
    assert cli_main(base + ["--student-weights", w, "--out", str(tmp_path / "b.pt")]) == 0
    assert "--freeze-bn" not in capsys.readouterr().err


def test_unanticipated_error_says_it_is_internal_and_debug_shows_the_traceback(digits_teacher, monkeypatch, capsys):
    """A defect of ours is not blamed on the user's input spec: one line, 'internal error while ...', exit 3."""
    import datafree.evaluation.metrics as metrics

    _, w = digits_teacher

    def broken(*a, **k):
        raise RuntimeError("The size of tensor a (52) must match the size of tensor b (54)")

    monkeypatch.setattr(metrics, "evaluate", broken)
    argv = ["evaluate", "small_cnn", "--weights", w, "--data", "digits:test"]
    assert main(argv) == 3
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err
    assert err.startswith("datafree: internal error while running `datafree evaluate`: RuntimeError: The size of tensor")
    assert "please report it" in err and "DATAFREE_DEBUG=1" in err and "input spec" not in err
    monkeypatch.setenv("DATAFREE_DEBUG", "1")
    with pytest.raises(RuntimeError, match="size of tensor"):
        main(argv)


@pytest.mark.parametrize("shape", ["1.7,8,8", "1,8.0,8", "1,8,x"])
def test_input_shape_integers_are_never_truncated(digits_teacher, capsys, shape):
    _, w = digits_teacher
    rc = main(["evaluate", "small_cnn", "--weights", w, "--input-shape", shape, "--mean", "0.3", "--std", "0.38",
               "--num-classes", "10", "--data", "digits:test"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err == f"datafree: error: --input-shape must be comma-separated integers, got {shape!r}"
