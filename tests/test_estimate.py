"""The accuracy-drop estimate (features against direct computations, the mapping, the CLI) and the bit-width autopilot."""
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import datafree as df
from datafree.cli import main
from datafree.compressors.artifact import read_artifact
from datafree.data.base import TensorData
from datafree.evaluation.estimate import MAPPING, SEED_OFFSET, DropMapping, drop_features, held_out_config, mixtures
from datafree.models.record import record_of

ROOT = Path(__file__).resolve().parents[1]


class Affine(nn.Module):
    """Logits = x @ W + b on flat inputs (a model whose outputs are easy to write down)."""

    def __init__(self, w: torch.Tensor, b: torch.Tensor) -> None:
        super().__init__()
        self.w, self.b = nn.Parameter(w), nn.Parameter(b)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) @ self.w + self.b


def test_mixtures_are_convex_pairs_of_the_samples():
    x = torch.randn(5, 2, 3, 3)
    m = mixtures(x, 40, seed=3)
    g = torch.Generator().manual_seed(3)
    i, j = torch.randint(5, (40,), generator=g), torch.randint(5, (40,), generator=g)
    lam = torch.rand(40, 1, 1, 1, generator=g)
    assert torch.allclose(m, lam * x[i] + (1 - lam) * x[j])
    assert torch.equal(mixtures(x, 40, seed=3), m) and not torch.equal(mixtures(x, 40, seed=4), m)


def test_drop_features_match_a_direct_computation():
    torch.manual_seed(0)
    w, b = torch.randn(12, 4), torch.randn(4)
    teacher = Affine(w, b)
    shift = torch.tensor([0.5, -0.3, 0.0, 1.2])
    student = Affine(w + 0.1 * torch.randn(12, 4), b + shift)
    held = TensorData(torch.randn(16, 3, 2, 2), name="h")
    f = drop_features(teacher, student, held, seed=5)
    x = torch.cat([held.x, mixtures(held.x, 256, 5)])
    zt, zs = teacher(x).detach(), student(x).detach()
    pt = zt.softmax(1)
    kl = (pt * (pt.log() - zs.log_softmax(1))).sum(1).mean()
    rel = ((zs - zt) ** 2).mean() / zt.var(1).mean()
    assert f["n"] == 16 + 256
    assert f["kl"] == pytest.approx(float(kl), rel=1e-5)
    assert f["rel"] == pytest.approx(float(rel), rel=1e-5)
    assert f["disagreement"] == pytest.approx(100 * float((zt.argmax(1) != zs.argmax(1)).float().mean()))
    same = drop_features(teacher, teacher, held)
    assert same["kl"] == pytest.approx(0, abs=1e-6) and same["rel"] == 0 and same["disagreement"] == 0


def test_drop_features_refuse_a_broken_model():
    teacher = Affine(torch.randn(4, 3), torch.zeros(3))
    bad = Affine(torch.full((4, 3), float("nan")), torch.zeros(3))
    with pytest.raises(df.DatafreeError, match="non-finite"):
        drop_features(teacher, bad, TensorData(torch.randn(4, 1, 2, 2), name="h"))
    with pytest.raises(df.DatafreeError, match="outputs"):
        drop_features(teacher, Affine(torch.randn(4, 5), torch.zeros(5)), TensorData(torch.randn(4, 1, 2, 2), name="h"))


def test_mapping_is_the_fitted_curve_made_monotone_with_its_interval():
    m = DropMapping(feature="kl", coef=(-0.5, 0.0, 2.0), x_range=(-2.0, 1.0), resid=(-0.2, 0.3), fitted_on="t")
    # at x = log(v) inside the range and left of the vertex (x = 0), the curve is the polynomial itself
    e = m(math.exp(-1.0))
    y = -0.5 * 1 + 2.0
    assert e["drop"] == pytest.approx(math.exp(y) - 1, abs=0.01)
    assert e["lo"] == pytest.approx(math.exp(y - 0.2) - 1, abs=0.01)
    assert e["hi"] == pytest.approx(math.exp(y + 0.3) - 1, abs=0.01)
    # right of the vertex the polynomial falls; the estimate does not
    assert m(math.exp(0.8))["drop"] == pytest.approx(math.exp(2.0) - 1, abs=0.01)
    vals = [m(math.exp(x / 10))["drop"] for x in range(-30, 20)]
    assert all(a <= b for a, b in zip(vals, vals[1:]))
    assert m(math.exp(1.5))["beyond_fit"] and not m(1.0)["beyond_fit"]


def test_library_mapping_is_the_one_the_benchmark_fitted():
    meta = json.loads((ROOT / "benchmarks/results/estimate.json").read_text())["meta"]["mapping"]
    assert MAPPING.feature == meta["feature"]
    assert list(MAPPING.coef) == meta["coef"] and list(MAPPING.x_range) == meta["x_range"]
    assert list(MAPPING.resid) == meta["resid"] and MAPPING.fitted_on == meta["fitted_on"]
    assert "CIFAR-10" in MAPPING.fitted_on


def test_held_out_samples_have_their_own_seed_and_budget():
    small = df.create_model("small_cnn")
    method, cfg = held_out_config(small, seed=3)
    assert method == "bn-stats" and cfg.seed == 3 + SEED_OFFSET and cfg.num == 64
    nobn = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    nobn.input_spec = df.InputSpec((1, 8, 8), (0.5,), (0.5,), 10)
    assert held_out_config(nobn)[0] == "inception"


def run(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_quantize_prints_stores_and_recomputes_the_estimate(capsys, tmp_path, digits_teacher):
    _, weights = digits_teacher
    out = tmp_path / "q.pt"
    code, so, _ = run(capsys, "quantize", "small_cnn", "--weights", weights, "--calib", "gaussian", "--w-bits", 4,
                      "--a-bits", 8, "--num-calib", 64, "--out", out, "--json", "--no-progress")
    assert code == 0
    info = json.loads(so)
    est = info["estimate"]
    assert est["lo"] <= est["drop"] <= est["hi"] and est["features"]["n"] == 64 + 256 and est["validated"]
    assert read_artifact(out)["extra"]["estimate"] == est
    # the same file, loaded back, with the same seed: the same held-out samples and the same features
    code, so, _ = run(capsys, "evaluate", out, "--estimate", "--json", "--no-progress")
    again = json.loads(so)["estimate"]
    assert again["features"] == est["features"] and again["drop"] == est["drop"]
    code, so, _ = run(capsys, "quantize", "small_cnn", "--weights", weights, "--calib", "gaussian", "--num-calib", 64,
                      "--out", tmp_path / "q2.pt", "--no-estimate", "--no-progress")
    assert code == 0 and "estimated" not in so
    code, so, _ = run(capsys, "prune", "small_cnn", "--weights", weights, "--sparsity", 0.3, "--unstructured",
                      "--out", tmp_path / "p.pt", "--no-progress")
    assert code == 0 and "estimated top-1 drop" in so


def test_evaluate_estimate_errors(capsys, tmp_path, digits_teacher):
    code, _, err = run(capsys, "evaluate", "small_cnn")
    assert code == 2 and "--data" in err and "--estimate" in err
    code, _, err = run(capsys, "evaluate", "small_cnn", "--weights", digits_teacher[1], "--estimate")
    assert code == 2 and "not a compressed file" in err


def test_autopilot_returns_the_smallest_model_within_the_budget(capsys, tmp_path, digits_teacher):
    _, weights = digits_teacher
    code, so, err = run(capsys, "quantize", "small_cnn", "--weights", weights, "--calib", "gaussian", "--num-calib", 64,
                        "--max-drop", 1.0, "--out", tmp_path / "a.pt", "--json", "--no-progress")
    assert code == 0, err
    info = json.loads(so)
    ok = [t for t in info["trials"] if t["estimated_drop"] <= 1.0]
    assert ok and info["size_bytes"] == min(t["size_bytes"] for t in ok)
    assert info["estimate"]["drop"] <= 1.0
    chosen = [t for t in info["trials"] if t["config"] == info["chosen"]][0]
    assert chosen["size_bytes"] == info["size_bytes"]
    m = df.load_artifact(tmp_path / "a.pt")
    assert df.model_size_bits(m) // 8 == info["size_bytes"]
    assert read_artifact(tmp_path / "a.pt")["extra"]["autopilot"]["max_drop"] == 1.0


def test_autopilot_refuses_a_size_given_twice(capsys, tmp_path):
    code, _, err = run(capsys, "quantize", "small_cnn", "--max-drop", 1, "--target-size", 1000, "--out", tmp_path / "a.pt")
    assert code == 2 and "--max-drop" in err and "--target-size" in err
    code, _, err = run(capsys, "quantize", "small_cnn", "--max-drop", 1, "--no-estimate", "--out", tmp_path / "a.pt")
    assert code == 2 and "--no-estimate" in err
    code, _, err = run(capsys, "quantize", "small_cnn", "--max-drop", -1, "--out", tmp_path / "a.pt", "--no-progress")
    assert code == 2 and "--max-drop" in err


def test_estimate_of_a_model_without_batchnorm_says_it_is_not_validated():
    teacher = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    teacher.input_spec = df.InputSpec((1, 8, 8), (0.5,), (0.5,), 10)
    student = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    student.load_state_dict(teacher.state_dict())
    record_of(student).input_spec = record_of(teacher).input_spec
    from datafree.evaluation.estimate import estimate_drop, estimate_line

    e = estimate_drop(teacher, student)
    assert not e["validated"] and "not validated" in estimate_line(e) and e["features"]["disagreement"] == 0


@pytest.mark.parametrize("gptq_passes,recon", [(True, True), (False, True), (False, False)])
def test_autopilot_tries_gptq_before_mixed_precision_and_brecq(digits_teacher, monkeypatch, gptq_passes, recon):
    from datafree.evaluation import autopilot as ap

    def fake_estimate(teacher, qm, held, seed):  # W5 and wider pass; at W4 only a reconstructed model (if allowed)
        cfg = record_of(qm).quant_config
        good = cfg.w_bits >= 5 or (cfg.recon.method == "gptq" and gptq_passes) or cfg.recon.method == "brecq"
        return {"drop": 0.5 if good else 3.0, "lo": 0.0, "hi": 4.0}

    monkeypatch.setattr(ap, "estimate_drop", fake_estimate)
    m, _ = digits_teacher
    data = df.load_dataset("digits:train", record_of(m).input_spec).subset(32)
    cfg = df.QuantConfig.from_flat(num_calib=32, recon_iters=2)
    best, trials = ap.autopilot(m, data, 1.0, cfg, held=data, recon=recon)
    labels = [t.label for t in trials]
    gptq = [x for x in labels if x.endswith("+gptq")]
    mixed = [i for i, x in enumerate(labels) if x.startswith("mixed")]
    if gptq_passes:  # down the failing widths while GPTQ passes (W4A8, then W4A4); mixed plans would all be larger
        assert gptq == ["W4A8+bias-correct+gptq", "W4A4+bias-correct+gptq"] and not mixed
    else:  # on the largest failing uniform trial below W5A8, before mixed precision
        assert gptq == ["W4A8+bias-correct+gptq"] and mixed and labels.index(gptq[0]) < min(mixed)
    assert any(x.endswith("+brecq") for x in labels) == (recon and not gptq_passes)
    passing = [t for t in trials if t.estimate["drop"] <= 1.0]
    assert best.size_bytes == min(t.size_bytes for t in passing)
    if gptq_passes:
        assert best.size_bytes <= trials[labels.index(gptq[0])].size_bytes
