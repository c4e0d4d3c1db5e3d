"""Structured Multi-Hashing: the virtual matrix, the budget, gradients, training, the artifact, the CLI."""
import copy
import json
import math

import pytest
import torch
import torch.nn as nn

import datafree as df
from datafree.cli import main
from datafree.compressors.hashing import HashConfig, hashable_tensors, make_hashed, materialize
from datafree.core.errors import DatafreeError
from datafree.models.record import record_of
from tests.conftest import measured


def test_every_tensor_is_its_slice_of_the_virtual_matrix_in_creation_order(digits_teacher):
    m, _ = digits_teacher
    h = make_hashed(m, HashConfig(fraction=0.3))
    names = [(n, p) for n, p, _, _ in record_of(h).hash_entries]
    assert names == hashable_tensors(m)  # conv/linear weights and biases, BN excluded, module order
    assert names[0] == ("features.0", "weight") and names[-1] == ("fc", "bias")
    total = sum(getattr(m.get_submodule(n), p).numel() for n, p in names)
    n = h.smh_X.shape[0]
    assert n == math.ceil(math.sqrt(total))
    v = (h.smh_X @ h.smh_Y).reshape(-1)
    off = 0
    for i, (name, p, o, shape) in enumerate(record_of(h).hash_entries):
        assert o == off and tuple(getattr(m.get_submodule(name), p).shape) == shape
        want = v[off:off + math.prod(shape)].view(shape) * h.smh_scales[i]
        assert torch.allclose(getattr(h.get_submodule(name), p), want)
        off += math.prod(shape)
    assert off == total <= n * n


@pytest.mark.parametrize("fraction", [0.5, 0.25, 0.1])
def test_variable_count_meets_the_budget(digits_teacher, fraction):
    m, _ = digits_teacher
    h = make_hashed(m, HashConfig(fraction=fraction))
    total = sum(p.numel() for p in m.parameters())
    n, M = h.smh_X.shape
    bn = sum(p.numel() for mod in h.modules() if isinstance(mod, nn.BatchNorm2d) for p in mod.parameters())
    got = sum(p.numel() for p in h.parameters())
    assert got == 2 * M * n + len(record_of(h).hash_entries) + bn  # X, Y, one scale per tensor, BN: nothing else trains
    target = round(fraction * total)
    assert target - 2 * n < got <= target
    assert df.model_size_bits(h) == 32 * got
    h2 = make_hashed(m, HashConfig(variables=5000))
    assert 5000 - 2 * h2.smh_X.shape[0] < sum(p.numel() for p in h2.parameters()) <= 5000


def test_gradients_reach_x_y_and_scales_and_copies_work(digits_teacher, digits_test):
    m, _ = digits_teacher
    h = make_hashed(m, HashConfig(fraction=0.25)).train()
    loss = nn.functional.cross_entropy(h(digits_test.x[:32]), digits_test.y[:32])
    loss.backward()
    for p in (h.smh_X, h.smh_Y, h.smh_scales):
        assert p.grad is not None and p.grad.abs().sum() > 0
    c = copy.deepcopy(h).eval()  # no autograd history left on the layers
    with torch.no_grad():
        assert torch.equal(c(digits_test.x[:8]), h.eval()(digits_test.x[:8]))


def test_svd_init_at_full_rank_is_the_teacher(digits_teacher, digits_test):
    m, _ = digits_teacher
    entries = hashable_tensors(m)
    n = math.ceil(math.sqrt(sum(getattr(m.get_submodule(a), b).numel() for a, b in entries)))
    bn = sum(p.numel() for mod in m.modules() if isinstance(mod, nn.BatchNorm2d) for p in mod.parameters())
    h = make_hashed(m, HashConfig(variables=2 * n * n + len(entries) + bn, init="svd")).eval()
    assert h.smh_X.shape[1] == n
    with torch.no_grad():
        assert torch.allclose(h(digits_test.x), m(digits_test.x), atol=1e-3)
    low = make_hashed(m, HashConfig(fraction=0.25, init="svd")).eval()  # the best rank-M fit of the teacher's tensors
    rnd = make_hashed(m, HashConfig(fraction=0.25)).eval()

    def rel_err(h):
        num = sum(((getattr(h.get_submodule(a), b) - getattr(m.get_submodule(a), b)) ** 2).sum() for a, b in entries)
        return float((num / sum((getattr(m.get_submodule(a), b) ** 2).sum() for a, b in entries)) ** 0.5)

    assert rel_err(low) < 0.99 < rel_err(rnd)  # closer than random, yet far: a 25 % rank of mixed layers fits little


def test_hashed_tiny_model_trains_by_kd_above_floor_and_round_trips(digits_teacher, digits_test, tmp_path):
    from datafree.compressors.artifact import load_artifact, save_artifact
    from datafree.compressors.hashing import hash_distill

    m, w = digits_teacher
    kd = df.KDConfig.preset("hash", steps=300, batch_size=64, val_every=1000)
    h = hash_distill(m, df.load_dataset("digits:train", record_of(m).input_spec), HashConfig(fraction=0.25), kd, progress=False)
    top1 = df.evaluate(h, digits_test)["top1"]
    # teacher ~98; 25 % of its variables, 300 KD steps on real digits (measured in test_bounds.json, 20 runs: 96.4..98.6)
    assert measured("hash.top1", top1) >= 92.0, top1
    save_artifact(h, tmp_path / "h.pt", teacher=m)
    back = load_artifact(tmp_path / "h.pt")
    with torch.no_grad():
        assert torch.equal(back(digits_test.x), h(digits_test.x))
    assert (tmp_path / "h.pt").stat().st_size < 0.45 * len(open(w, "rb").read())  # the file follows the budget
    plain = materialize(back)
    assert not hasattr(plain, "smh_X") and isinstance(plain.fc.weight, nn.Parameter)
    with torch.no_grad():
        assert torch.allclose(plain(digits_test.x), h(digits_test.x), atol=1e-5)


def test_cli_hash_evaluate_export_and_errors(digits_teacher, tmp_path, capsys):
    _, w = digits_teacher
    out, plain = tmp_path / "h.pt", tmp_path / "plain.pt"
    assert main(["hash", "small_cnn", "--weights", w, "--fraction", "0.5", "--data", "digits:train", "--steps", "30",
                 "--out", str(out), "--materialize", str(plain), "--eval", "digits:test", "--json", "--no-progress"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert 0.45 < r["fraction"] <= 0.5 and r["bytes"] == out.stat().st_size and r["steps"] == 30
    assert main(["evaluate", str(out), "--data", "digits:test", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["top1"] == r["top1"]
    assert main(["evaluate", "small_cnn", "--weights", str(plain), "--data", "digits:test", "--json"]) == 0
    assert abs(json.loads(capsys.readouterr().out)["top1"] - r["top1"]) < 0.5
    pytest.importorskip("onnxruntime")
    assert main(["export", str(out), "--out", str(tmp_path / "h.onnx"), "--check", "digits:test", "--reps", "2",
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["prediction_agreement"] >= 99.5
    assert main(["hash", "small_cnn", "--weights", w, "--variables", "100", "--data", "digits:train",
                 "--out", str(tmp_path / "x.pt")]) == 2
    err = capsys.readouterr().err
    assert "--fraction/--variables" in err and len(err.strip().splitlines()) == 1
    assert main(["hash", "small_cnn", "--weights", w, "--fraction", "1.5", "--data", "digits:train",
                 "--out", str(tmp_path / "y.pt")]) == 2
    assert "--fraction" in capsys.readouterr().err


def test_budget_errors_are_one_line(digits_teacher):
    m, _ = digits_teacher
    with pytest.raises(DatafreeError, match="raise --fraction"):
        make_hashed(m, HashConfig(variables=10))
    with pytest.raises(DatafreeError, match="fraction"):
        HashConfig(fraction=0)
