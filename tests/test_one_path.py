"""One path per compressor: each subcommand and its library call (`run_compressor`) give the same file, bit for bit."""
import pytest
import torch

import datafree as df
from datafree.cli import main
from datafree.compressors import run_compressor
from datafree.compressors.artifact import save_artifact
from datafree.compressors.continual import ContinualConfig
from datafree.compressors.hashing import HashConfig
from datafree.compressors.prune import PruneConfig
from datafree.compressors.quant import QuantConfig
from datafree.kd.loop import KDConfig
from datafree.kd.sources import load_source
from datafree.models.record import record_of

STEPS = ["--steps", "4"]


def _stored(path):
    return torch.load(path, weights_only=True)


def _library(name, teacher, weights, tmp_path, cli_file):
    """The library call a user would write for the same job, with the configs the CLI stored."""
    t = _stored(cli_file)["transforms"][-1]
    data = load_source("digits:train", teacher, num=64, seed=0)
    if name == "quantize":
        cfg = QuantConfig.from_dict(t["config"])
        return run_compressor(teacher, name, data, cfg, kd=KDConfig.from_dict(t["kd"]))
    if name == "prune":
        kd = KDConfig.preset("prune", steps=4, seed=0)
        return run_compressor(teacher, name, data, PruneConfig(sparsity=0.5, structured=True), kd=kd,
                              checkpoint_dir=str(tmp_path / "lib.ckpt"))
    if name == "distill":
        spec = record_of(teacher).input_spec
        torch.manual_seed(0)
        student = df.load_model("small_cnn", None, num_classes=spec.num_classes, input_spec=spec)
        return run_compressor(teacher, name, data, KDConfig.preset("student", steps=4, seed=0), student=student,
                              data_name="digits:train", checkpoint_dir=str(tmp_path / "lib.ckpt"))
    if name == "hash":
        return run_compressor(teacher, name, data, HashConfig.from_dict(t["config"]), kd=KDConfig.from_dict(t["kd"]),
                              checkpoint_dir=str(tmp_path / "lib.ckpt"))
    kd = KDConfig.preset("continual", steps=4, seed=0)
    new = df.load_dataset("digits:train", record_of(teacher).input_spec).only_classes(range(5, 10)).subset(64, 0)
    return run_compressor(teacher, name, new, ContinualConfig(method="lwf", kd_weight=1.0, temperature=kd.temperature),
                          num_classes=10, kd=kd)


def _cli_args(name, w):
    base = ["small_cnn", "--weights", w, "--seed", "0", "--no-progress", "--json"]
    data = ["--data", "digits:train", "--num", "64"]
    return {"quantize": ["quantize", *base, "--calib", "digits:train", "--num-calib", "64", "--w-bits", "4",
                         "--a-bits", "4", "--finetune-steps", "4"],
            "prune": ["prune", *base, "--structured", "--sparsity", "0.5", *data, "--finetune-steps", "4"],
            "distill": ["distill", *base, "--student", "small_cnn", *data, *STEPS],
            "hash": ["hash", *base, "--fraction", "0.5", *data, *STEPS],
            "extend": ["extend", *base, "--num-classes", "5", "--new-data", "digits:train", "--new-classes", "5-9",
                       "--num-new", "64", "--method", "lwf", *STEPS]}[name]


@pytest.mark.parametrize("name", ["quantize", "prune", "distill", "hash", "extend"])
def test_the_cli_and_the_library_give_the_same_file(name, digits_teacher, tmp_path, capsys):
    teacher, w = digits_teacher
    if name == "extend":  # a 5-class model to grow to 10
        torch.manual_seed(1)
        five = df.create_model("small_cnn", num_classes=5)
        w = str(tmp_path / "five.pt")
        torch.save(five.state_dict(), w)
        teacher = df.load_model("small_cnn", w, num_classes=5)
    cli_file = tmp_path / "cli.pt"
    torch.manual_seed(0)
    assert main([*_cli_args(name, w), "--out", str(cli_file)]) == 0
    capsys.readouterr()
    torch.manual_seed(0)
    res = _library(name, teacher, w, tmp_path, cli_file)
    save_artifact(res.model, tmp_path / "lib.pt", teacher=teacher)
    a, b = _stored(cli_file), _stored(tmp_path / "lib.pt")
    assert a["transforms"] == b["transforms"]
    assert a["state_dict"].keys() == b["state_dict"].keys()
    diff = [k for k in a["state_dict"] if not torch.equal(a["state_dict"][k], b["state_dict"][k])]
    assert not diff, f"{name}: CLI and library differ in {diff[:5]}"
    assert res.report.get("seconds", 0) >= 0 and isinstance(res.curve, list)
