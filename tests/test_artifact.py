"""One artifact format for every registered compressor; files never run code."""
import builtins
import json
import pickle

import numpy as np
import pytest
import torch

import datafree as df
from datafree.cli import main
from datafree.compressors.artifact import load_artifact, save_artifact
from datafree.compressors.base import COMPRESSORS, compress
from datafree.compressors.continual import ContinualConfig
from datafree.compressors.prune import PruneConfig
from datafree.compressors.quant import QuantConfig
from datafree.kd.loop import KDConfig
from datafree.models.record import record_of
from tests.conftest import write_legacy_quantized


def _case(name, teacher, real):
    """A tiny run of compressor `name`: (data, config, keyword arguments)."""
    kd = KDConfig(steps=3, batch_size=16, lr=1e-3)
    if name == "quantize":
        return real, QuantConfig(w_bits=4, a_bits=4, num_calib=64), {"kd": kd}
    if name == "prune":
        return real, PruneConfig(sparsity=0.5, structured=True), {"kd": kd}
    if name == "distill":
        torch.manual_seed(0)
        return real, kd, {"student": df.create_model("small_cnn")}
    if name == "extend":
        t5 = df.create_model("small_cnn", num_classes=5)
        t5.load_state_dict({k: (v[:5] if k.startswith("fc.") else v) for k, v in teacher.state_dict().items()})
        new = real.only_classes(range(5, 10)).subset(64)
        return new, ContinualConfig(method="lwf"), {"num_classes": 10, "kd": kd, "_model": t5}
    if name == "hash":
        from datafree.compressors.hashing import HashConfig

        return real, HashConfig(fraction=0.3), {"kd": kd, "progress": False}
    raise AssertionError(f"compressor {name!r} has no contract case; add one to tests/test_artifact.py")


@pytest.mark.parametrize("name", sorted(COMPRESSORS.names()))
def test_every_compressor_writes_an_artifact_evaluate_reloads(name, digits_teacher, digits_test, tmp_path, capsys):
    teacher, _ = digits_teacher
    real = df.load_dataset("digits:train", record_of(teacher).input_spec).subset(256)
    data, cfg, kw = _case(name, teacher, real)
    model = kw.pop("_model", teacher)
    out = compress(model, name, data, cfg, **kw)
    assert record_of(out).transforms[-1]["compressor"] == name and record_of(out).transforms[-1]["config"] == cfg.to_dict()
    path = tmp_path / f"{name}.pt"
    save_artifact(out, path, teacher=model)
    back = load_artifact(path)
    assert [t["compressor"] for t in record_of(back).transforms] == [t["compressor"] for t in record_of(out).transforms]
    assert torch.equal(df.predict(out, digits_test), df.predict(back, digits_test))
    assert df.model_size_bits(back) == df.model_size_bits(out)
    code = main(["evaluate", str(path), "--data", "digits:test", "--json"])
    r = json.loads(capsys.readouterr().out)
    assert code == 0 and r["top1"] == df.evaluate(out, digits_test)["top1"]


def test_pruned_artifact_still_loads_as_weights_of_the_zoo_model(digits_teacher, digits_test, tmp_path):
    teacher, _ = digits_teacher
    out = compress(teacher, "prune", None, PruneConfig(sparsity=0.5))
    save_artifact(out, tmp_path / "p.pt")
    m = df.load_model("small_cnn", str(tmp_path / "p.pt"))  # the 0.1 way: MODEL --weights FILE
    assert torch.equal(df.predict(m, digits_test), df.predict(out, digits_test))


def test_legacy_quantized_file_still_loads(digits_teacher, digits_test, tmp_path):
    teacher, _ = digits_teacher
    q = write_legacy_quantized(teacher, df.load_dataset("digits:train", record_of(teacher).input_spec), tmp_path / "old.pt")
    assert torch.equal(df.predict(df.load_quantized(tmp_path / "old.pt"), digits_test), df.predict(q, digits_test))


USER = '''
import torch.nn as nn
INPUT_SHAPE, MEAN, STD, NUM_CLASSES = (1, 8, 8), (0.3,), (0.38,), 10
def make(num_classes=10):
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(144, num_classes))
'''


def test_user_model_file_is_given_explicitly_and_checked(tmp_path, capsys):
    f = tmp_path / "user.py"
    f.write_text(USER)
    ref = f"{f}:make"
    q = df.quantize(df.load_model(ref), df.load_dataset("digits:train", record_of(df.create_model(ref)).input_spec).subset(64),
                    QuantConfig(num_calib=64))
    save_artifact(q, tmp_path / "q.pt")
    assert main(["evaluate", str(tmp_path / "q.pt"), "--data", "digits:test"]) == 2
    err = capsys.readouterr().err
    assert "--model-file" in err and len(err.strip().splitlines()) == 1
    assert main(["evaluate", str(tmp_path / "q.pt"), "--model-file", ref, "--data", "digits:test", "--json"]) == 0
    assert 0 <= json.loads(capsys.readouterr().out)["top1"] <= 100
    g = tmp_path / "other.py"
    g.write_text(USER.replace("nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4)", "nn.Conv2d(1, 4, 3, bias=False), nn.BatchNorm2d(4)"))
    assert main(["evaluate", str(tmp_path / "q.pt"), "--model-file", f"{g}:make", "--data", "digits:test"]) == 2
    assert "different architecture" in capsys.readouterr().err


class _Plant:
    """Unpickling this creates a file: the proof that a loader ran code."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (builtins.open, (self.path, "w"))


def test_no_file_runs_code(digits_teacher, tmp_path, capsys):
    teacher, w = digits_teacher
    marker = tmp_path / "PWNED"
    evil = tmp_path / "evil.pt"
    torch.save({"state_dict": {"fc.weight": _Plant(marker)}, "format": "datafree-artifact-v1"}, evil)
    with open(tmp_path / "evil.pkl", "wb") as fh:
        pickle.dump(_Plant(marker), fh)

    # weights, student weights, artifacts (evaluate, export), a run checkpoint (pool included), a shard
    calls = [["evaluate", "small_cnn", "--weights", evil, "--data", "digits:test"],
             ["evaluate", str(evil), "--data", "digits:test"],
             ["export", str(evil), "--out", tmp_path / "e.onnx"],
             ["distill", "small_cnn", "--weights", w, "--student", "small_cnn", "--student-weights", evil,
              "--data", "digits:train", "--steps", "1", "--out", tmp_path / "s.pt"]]
    ck = tmp_path / "run.pt.ckpt"
    ck.mkdir()
    torch.save({"identity": _Plant(marker)}, ck / "state.pt")
    calls.append(["distill", "small_cnn", "--weights", w, "--student", "small_cnn", "--data", "digits:train",
                  "--steps", "1", "--out", tmp_path / "run.pt", "--no-progress"])
    calls.append(["prune", "small_cnn", "--weights", w, "--structured", "--sparsity", "0.5", "--data", "digits:train",
                  "--finetune-steps", "1", "--checkpoint-dir", ck, "--out", tmp_path / "p.pt", "--no-progress"])
    syn = tmp_path / "syn"
    assert main(["synthesize", "small_cnn", "--weights", w, "--method", "gaussian", "--num", "8", "--out", str(syn)]) == 0
    shard = next(syn.glob("shard_*.npz"))
    np.savez(shard, x=np.array([_Plant(marker)], dtype=object), y=np.zeros(1), logits=np.zeros((1, 10)))
    calls.append(["quantize", "small_cnn", "--weights", w, "--calib", str(syn), "--out", tmp_path / "q.pt"])
    capsys.readouterr()
    for args in calls:
        code = main([str(a) for a in args])
        err = capsys.readouterr().err
        assert code != 0 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, (args, err)
        assert not marker.exists(), f"loading ran code: {args}"
    # and the library loaders directly
    for load in (lambda: df.load_model("small_cnn", str(evil)), lambda: load_artifact(evil)):
        with pytest.raises(df.DatafreeError):
            load()
        assert not marker.exists()


def test_compressors_chain_through_files(digits_teacher, digits_test, tmp_path, capsys):
    """prune -> file -> quantize the file -> file: both transforms are recorded and the result reloads exactly."""
    _, w = digits_teacher
    p, q = tmp_path / "p.pt", tmp_path / "q.pt"
    assert main(["prune", "small_cnn", "--weights", w, "--structured", "--sparsity", "0.5", "--out", str(p)]) == 0
    assert main(["quantize", str(p), "--calib", "digits:train", "--w-bits", "4", "--a-bits", "4", "--out", str(q),
                 "--eval", "digits:test", "--json"]) == 0
    capsys.readouterr()
    back = load_artifact(q)
    assert [t["compressor"] for t in record_of(back).transforms] == ["prune", "quantize"]
    assert main(["evaluate", str(q), "--data", "digits:test", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["top1"] == df.evaluate(back, digits_test)["top1"] and r["size_bits"] < df.model_size_bits(load_artifact(p)) / 4


def test_a_file_with_the_flat_quant_config_of_version_2_still_loads(digits_teacher, digits_test, tmp_path):
    """Files written before QuantConfig nested its stages (version 2, flat) load to the same model."""
    m, _ = digits_teacher
    cfg = QuantConfig.from_flat(w_bits=4, a_bits=4, num_calib=64, reconstruct="adaround", recon_iters=5)
    q = df.quantize(m, df.load_dataset("digits:train", record_of(m).input_spec).subset(64), cfg)
    save_artifact(q, tmp_path / "new.pt", teacher=m)
    obj = torch.load(tmp_path / "new.pt", weights_only=True)
    t = obj["transforms"][0]["config"]
    flat = {k: v for k, v in t.items() if k not in ("recon", "mixed", "finetune")}
    flat.update({"reconstruct" if k == "method" else k if k in ("round_weight", "round_norm", "block_size")
                 else f"recon_{k}": v for k, v in t["recon"].items() if k != "damp"})  # gptq_damp came after version 2
    flat.update(t["mixed"], finetune_weights=t["finetune"]["weights"], config_version=2)
    obj["transforms"][0]["config"] = flat
    torch.save(obj, tmp_path / "old.pt")
    back = load_artifact(tmp_path / "old.pt")
    assert record_of(back).quant_config == cfg
    with torch.no_grad():
        assert torch.equal(back(digits_test.x), q(digits_test.x))


def test_a_file_from_before_bias_correction_loads_through_the_artifact_path(digits_teacher, digits_test, tmp_path):
    """Files written before QuantLayer.bias_corr and QuantConfig.bias_from (config version 3) load to the same model:
    the buffer is zero, the config says the samples' moments (the only bias correction there was)."""
    m, _ = digits_teacher
    q = df.quantize(m, df.load_dataset("digits:train", record_of(m).input_spec).subset(64),
                    QuantConfig.from_flat(w_bits=4, a_bits=8, num_calib=64))
    save_artifact(q, tmp_path / "new.pt", teacher=m)
    obj = torch.load(tmp_path / "new.pt", weights_only=True)
    assert any(k.endswith("bias_corr") for k in obj["state_dict"])
    obj["state_dict"] = {k: v for k, v in obj["state_dict"].items() if not k.endswith("bias_corr")}
    t = obj["transforms"][0]["config"]
    del t["bias_from"]
    t["config_version"] = 3
    torch.save(obj, tmp_path / "old.pt")
    back = load_artifact(tmp_path / "old.pt")
    assert record_of(back).quant_config.bias_from == "samples"
    with torch.no_grad():
        assert torch.equal(back(digits_test.x), q(digits_test.x))
