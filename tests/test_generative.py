"""Generator-based synthesis: the network, every loss term against a direct computation, the methods, the stream."""
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import datafree as df
from datafree.kd.loop import Distiller, KDConfig
from datafree.kd.sources import GeneratorSource, RoundsConfig, stream_source
from datafree.models.record import record_of
from datafree.models.spec import InputSpec
from datafree.synth import Generator, make_config, synthesize
from datafree.synth.gen_losses import (
    activation_loss,
    adversarial_loss,
    info_entropy_loss,
    info_nce,
    inter_sample_diversity,
    onehot_loss,
    rdskd_generator_loss,
)
from tests.conftest import measured

GEN_METHODS = ["dafl", "rdskd", "cmi", "fast"]


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32), (3, 30, 22), (1, 8, 8)])
def test_generator_sized_from_the_input_spec(shape):
    c = shape[0]
    spec = InputSpec(shape, (0.5,) * c, (0.25,) * c, 10)
    g = Generator(spec, latent_dim=7, width=4)
    x = g(torch.randn(5, 7))
    assert tuple(x.shape) == (5, *shape)
    lo, hi = spec.pixel_bounds()
    assert bool((x >= lo - 1e-5).all()) and bool((x <= hi + 1e-5).all())  # sigmoid pixels, normalized
    assert Generator(spec).body[2].out_channels == 64  # default width 32 (x2 in the middle)
    # DAFL's output: tanh then affine-free BN, so each batch has per-channel mean 0 and std 1 in the normalized space
    xb = Generator(spec, latent_dim=7, width=4, output="bn")(torch.randn(6, 7))
    assert tuple(xb.shape) == (6, *shape)
    m, v = xb.mean((0, 2, 3)), xb.var((0, 2, 3), unbiased=False)
    assert torch.allclose(m, torch.zeros(c), atol=1e-5) and torch.allclose(v, torch.ones(c), atol=1e-3)
    with pytest.raises(df.DatafreeError, match="generator output"):
        Generator(spec, output="tanh")


def test_onehot_activation_entropy_match_direct_computation():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.1, 0.3, 0.2], [-1.0, -2.0, 4.0], [0.0, 0.0, 0.5]])
    p = np.exp(logits.numpy()) / np.exp(logits.numpy()).sum(1, keepdims=True)
    amax = p.argmax(1)
    assert onehot_loss(logits).item() == pytest.approx(-np.mean(np.log(p[np.arange(4), amax])), rel=1e-5)
    pbar = p.mean(0)
    assert info_entropy_loss(logits).item() == pytest.approx(float((pbar * np.log(pbar)).sum()), rel=1e-5)
    f = torch.tensor([[1.0, -2.0], [0.5, 0.0]])
    assert activation_loss(f).item() == pytest.approx(-(1 + 2 + 0.5 + 0) / 4)


def test_rdskd_terms_match_direct_computation():
    z = torch.tensor([[0.0, 1.0], [1.0, 1.0], [3.0, 1.0], [1.0, 2.0]])
    logits = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 0.0], [0.0, 0.0]])
    p = torch.softmax(logits, 1).numpy()
    dp = np.sqrt(((p[2:] - p[:2]) ** 2).sum())
    dz = np.sqrt(((z[2:] - z[:2]).numpy() ** 2).sum())
    assert inter_sample_diversity(z, logits).item() == pytest.approx(1 / (dp / dz + 1e-20), rel=1e-5)
    got = rdskd_generator_loss(torch.tensor(0.7), torch.tensor(-1.5), torch.tensor(0.3), 0.5, -2.0)
    assert got.item() == pytest.approx(math.exp(0.2) + math.exp(0.5) + 0.3, rel=1e-6)


def test_adversarial_term_counts_only_agreeing_samples():
    t = torch.tensor([[3.0, 0.0], [0.0, 2.0], [1.0, 0.0]])
    s = torch.tensor([[1.0, 0.0], [1.0, 0.0], [2.0, 1.0]])  # agrees on samples 0 and 2
    pt, ps = torch.softmax(t, 1), torch.softmax(s, 1)
    kl = (pt * (pt.log() - ps.log())).sum(1)
    want = -(kl[0] + kl[2]) / 3
    assert adversarial_loss(s, t).item() == pytest.approx(want.item(), rel=1e-5)


def test_info_nce_matches_a_direct_loop():
    g = torch.Generator().manual_seed(0)
    q = F.normalize(torch.randn(4, 3, generator=g), dim=1)
    k = F.normalize(torch.randn(4, 3, generator=g), dim=1)
    bank = F.normalize(torch.randn(5, 3, generator=g), dim=1)
    tau = 0.2

    def direct(a, b):
        tot = 0.0
        for i in range(len(a)):
            keys = torch.cat([b, bank])
            sims = [(a[i] @ key).item() / tau for key in keys]
            tot += -sims[i] + math.log(sum(math.exp(v) for v in sims))
        return tot / len(a)

    assert info_nce(q, k, bank, tau).item() == pytest.approx(0.5 * (direct(q, k) + direct(k, q)), rel=1e-5)


@pytest.mark.parametrize("method", GEN_METHODS)
def test_each_method_writes_a_stored_set(method, digits_teacher, tmp_path):
    teacher, _ = digits_teacher
    cfg = make_config(method, num=24, batch_size=12, iterations=3, seed=1)
    out = tmp_path / method
    data = synthesize(teacher, method, cfg, out=str(out), progress=False)
    assert tuple(data.x.shape) == (24, 1, 8, 8) and data.logits is not None
    man = json.loads((out / "manifest.json").read_text())
    assert man["method"] == method and (out / "grid.png").exists() and (out / "synth_state.pt").exists()
    with torch.no_grad():
        pred = teacher(data.x).argmax(1)
    if method in ("dafl", "rdskd"):  # unconditional: labels are the teacher's argmax
        assert torch.equal(data.y, pred)
    else:  # class-conditional: balanced targets
        assert torch.equal(data.y, torch.arange(24) % 10)
    again = synthesize(teacher, method, cfg, progress=False)  # seeded: the same samples without a directory
    assert torch.allclose(again.x, data.x, atol=1e-5)


def test_dafl_generator_learns_confident_balanced_outputs(digits_teacher):
    teacher, _ = digits_teacher
    before = synthesize(teacher, "dafl", make_config("dafl", num=256, batch_size=256, iterations=0), progress=False)
    after = synthesize(teacher, "dafl", make_config("dafl", num=256, batch_size=256, iterations=150), progress=False)

    def stats(d):
        p = torch.softmax(d.logits, 1)
        return (info_entropy_loss(d.logits).item(), p.max(1).values.mean().item(),
                int((torch.bincount(p.argmax(1), minlength=10) > 0).sum()))

    (ie0, _, n0), (ie1, conf1, n1) = stats(before), stats(after)
    # measured in test_bounds.json, 20 runs: entropy drop 1.26..2.25, 10 classes always, confidence 0.67..0.77
    assert measured("dafl.entropy_drop", ie0 - ie1) > 0.3 and measured("dafl.classes", n1) >= max(7, n0 + 1)  # spread
    assert measured("dafl.confidence", conf1) > 0.5  # while the one-hot term keeps each sample confident


def _run(teacher, method, steps, state=None, split=None, **extra):
    torch.manual_seed(0)
    student = df.create_model("small_cnn")
    cfg = make_config(method, iterations=4, seed=3, batch_size=16, **extra)
    src = GeneratorSource(method, cfg, RoundsConfig(rounds=3, per_round=16, steps_per_round=2), seed=5, progress=False)
    d = Distiller(student, teacher, KDConfig(steps=steps, batch_size=8, lr=1e-3, freeze_bn=False, seed=2), source=src)
    if split is None:
        d.run(progress=False)
        return student, None
    d.run(steps=split, progress=False)
    blob = {"student": {k: v.clone() for k, v in student.state_dict().items()}, "dist": d.state_dict()}
    return student, blob


@pytest.mark.parametrize("method,extra", [(m, {}) for m in GEN_METHODS] + [("dafl", {"joint": True})])
def test_stream_resumes_exactly(method, extra, digits_teacher, tmp_path):
    teacher, _ = digits_teacher
    full, _ = _run(teacher, method, 7, **extra)
    _, blob = _run(teacher, method, 7, split=3, **extra)
    torch.save(blob, tmp_path / "ck.pt")
    blob = torch.load(tmp_path / "ck.pt", weights_only=True)  # the checkpoint is plain tensors
    torch.manual_seed(123)  # a resumed process has a different global RNG state
    student = df.create_model("small_cnn")
    student.load_state_dict(blob["student"])
    cfg = make_config(method, iterations=4, seed=3, batch_size=16, **extra)
    src = GeneratorSource(method, cfg, RoundsConfig(rounds=3, per_round=16, steps_per_round=2), seed=5, progress=False)
    d = Distiller(student, teacher, KDConfig(steps=7, batch_size=8, lr=1e-3, freeze_bn=False, seed=2), source=src)
    d.load_state_dict(blob["dist"])
    d.run(progress=False)
    for (k, a), b in zip(full.state_dict().items(), student.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), k


def test_joint_mode_steps_the_generator_once_per_student_batch(digits_teacher):
    teacher, _ = digits_teacher
    teacher.eval()
    student = df.create_model("small_cnn")
    src = GeneratorSource("dafl", make_config("dafl", iterations=2, batch_size=8, joint=True),
                          RoundsConfig(rounds=1, per_round=8, steps_per_round=5), progress=False)
    calls = []
    h = teacher.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    Distiller(student, teacher, KDConfig(steps=5, batch_size=8, freeze_bn=False, augment=False, mixup=0.0),
              source=src).run(progress=False)
    h.remove()
    assert src.engine.steps_done == 2 + 5  # warm-up steps, then one per student batch
    assert len(calls) == 2 + 5  # the loop reused the logits of each generator step: no second teacher forward
    g0 = {k: v.clone() for k, v in src.engine.G.state_dict().items()}
    b = src.sample(6)
    with torch.no_grad():
        assert torch.allclose(b.logits, teacher(b.x), atol=1e-5)  # the logits belong to exactly this batch
    assert any(not torch.equal(g0[k], v) for k, v in src.engine.G.state_dict().items())  # and the generator moved


def test_round_methods_grow_a_pool_and_fresh_methods_do_not(digits_teacher):
    teacher, _ = digits_teacher
    student = df.create_model("small_cnn")
    for method, fresh in [("fast", False), ("dafl", True)]:
        src = stream_source(method, make_config(method, iterations=2, batch_size=10),
                            RoundsConfig(rounds=3, per_round=10, steps_per_round=2), progress=False)
        d = Distiller(student, teacher, KDConfig(steps=6, batch_size=4, freeze_bn=False), source=src)
        recs = d.run(progress=False)
        if fresh:
            assert len(src.pool) == 0 and len(src) == 6 * 4
            assert recs[0]["source"]["generator_steps"] == 2
        else:
            assert len(src.pool) == 3 and len(src) == 30 and src.teacher_logits
            assert [r["source"]["round"] for r in recs if "source" in r] == [1, 2, 3]
            assert "bn" in recs[0]["source"] and "adv" in recs[2]["source"]  # the student joins after round 1
    assert isinstance(stream_source("deepinversion"), df.kd.sources.PoolSource)
    with pytest.raises(df.DatafreeError, match="not a generator method"):
        GeneratorSource("deepinversion")


def test_kd_loop_reuses_logits_the_source_computed(digits_teacher):
    teacher, _ = digits_teacher
    calls = []
    h = teacher.register_forward_hook(lambda m, i, o: calls.append(len(i[0])))
    try:
        src = stream_source("fast", make_config("fast", iterations=1, batch_size=10),
                            RoundsConfig(rounds=1, per_round=10, steps_per_round=5), progress=False)
        kd = KDConfig(steps=5, batch_size=4, freeze_bn=False, augment=False)
        d = Distiller(df.create_model("small_cnn"), teacher, kd, source=src)
        d.run(progress=False)
        n_synth = len(calls)  # the round's generator step and labelling
        assert n_synth >= 1
        d2 = Distiller(df.create_model("small_cnn"), teacher, kd.replace(augment=True), source=src)
        calls.clear()
        d2.run(progress=False)
        assert calls == [4] * 5  # augmented inputs are new inputs: one teacher forward per step
    finally:
        h.remove()
    assert n_synth == 2  # one generator iteration + the labelling forward; the 5 KD steps reused the pool's logits


def test_kd_bf16_and_channels_last_train_like_fp32(digits_teacher):
    teacher, _ = digits_teacher
    data = df.load_dataset("digits:train", record_of(teacher).input_spec).subset(256, 0)
    out = {}
    for name, kw in {"fp32": {}, "fast": {"bf16": True, "channels_last": True}}.items():
        torch.manual_seed(0)
        s = df.create_model("small_cnn")
        recs = Distiller(s, teacher, KDConfig(steps=30, batch_size=32, lr=3e-3, freeze_bn=False, **kw), source=data).run(progress=False)
        losses = [r["loss"] for r in recs]
        out[name] = (losses[0], float(np.mean(losses[:3])), float(np.mean(losses[-10:])))
        assert teacher.features[0].weight.is_contiguous()  # the caller's teacher is untouched (a working copy is converted)
    # single-batch losses are noisy (1.3-2.5 late in the run): compare means, not the last batch (a CI CPU with native
    # bf16 once ended 0.4 % above a last-batch threshold); here the curve falls ~2.9 -> ~1.65 in both layouts
    assert measured("kd_fast.loss_late_over_early", out["fast"][2] / out["fast"][1]) < 0.75  # measured in test_bounds.json, 20 runs: 0.58..0.63
    assert out["fast"][2] == pytest.approx(out["fp32"][2], rel=0.15)  # trains like fp32, not merely downhill
    assert out["fast"][0] == pytest.approx(out["fp32"][0], rel=0.05)  # bf16 teacher logits: close to fp32


def test_cli_distill_with_a_generator_writes_the_curve(digits_teacher, tmp_path, capsys):
    _, path = digits_teacher
    out = tmp_path / "s.pt"
    from datafree.cli import main as cli_main
    rc = cli_main(["distill", "small_cnn", "--weights", path, "--student", "small_cnn", "--method", "dafl",
                      "--iterations", "20", "--per-round", "32", "--steps", "40", "--val", "digits:test", "--val-every", "20",
                      "--out", str(out), "--json", "--no-progress"])
    assert rc == 0
    info = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert info["steps"] == 40 and info["curve"].endswith("s.curve.png")
    curve = json.loads((tmp_path / "s.curve.json").read_text())["points"]
    assert [c["step"] for c in curve] == [20, 40] and all(0 <= c["val_top1"] <= 100 for c in curve)
    assert (tmp_path / "s.curve.png").stat().st_size > 1000
    rc = cli_main(["distill", "small_cnn", "--weights", path, "--student", "small_cnn", "--method", "dafl", "--joint",
                   "--iterations", "2", "--per-round", "16", "--steps", "3", "--out", str(tmp_path / "j.pt"), "--json",
                   "--no-progress"])
    assert rc == 0  # --joint reaches the generator config from the command line


def test_fresh_generator_bn_term_matches_direct_computation_and_pulls_statistics(digits_teacher):
    from datafree.synth.generative import DAFL
    teacher, _ = digits_teacher
    bns = [m for m in teacher.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns, "the fixture teacher must have BatchNorm layers"

    def direct(x):
        seen = []
        hs = [m.register_forward_hook(lambda m, i, o: seen.append((m, i[0].detach()))) for m in bns]
        with torch.no_grad():
            teacher(x)
        for h in hs:
            h.remove()
        return sum(float(torch.linalg.vector_norm(a.mean((0, 2, 3)) - m.running_mean)
                         + torch.linalg.vector_norm(a.var((0, 2, 3), unbiased=False) - m.running_var)) for m, a in seen)

    s = DAFL(teacher, make_config("dafl", bn_weight=0.5, batch_size=32, iterations=1, seed=0))
    tap, h = s._tapped()
    x, _, parts = s._g_step(32, tap)
    h.remove()
    assert parts["bn"] == pytest.approx(direct(x), rel=1e-4)
    assert make_config("dafl").bn_weight == 1.0 and make_config("rdskd").bn_weight == 1.0  # ours, on by default
    off = DAFL(teacher, make_config("dafl", bn_weight=0.0, batch_size=32, iterations=1, seed=0))
    tap, h = off._tapped()
    _, _, parts_off = off._g_step(32, tap)
    h.remove()
    assert "bn" not in parts_off  # bn_weight 0: the paper's objective, no BN term

    def trained_bn(w):  # BN term of a fresh batch after 60 generator steps with / without the term
        t = DAFL(teacher, make_config("dafl", bn_weight=w, batch_size=64, iterations=60, seed=0))
        t.train()
        t.G.eval()
        return direct(t.generate(64, torch.Generator().manual_seed(1)))

    # measured in test_bounds.json, 20 runs: 0.19..0.52
    assert measured("dafl.bn_term_ratio", trained_bn(1.0) / trained_bn(0.0)) < 0.85
    with pytest.raises(df.DatafreeError, match="bn_weight"):
        make_config("dafl", bn_weight=-1.0).validate()
