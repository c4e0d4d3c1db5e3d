"""Reconstruction PTQ: AdaRound's rounding, its regularizer, blocks found by tracing, the error it lowers."""
import copy

import pytest
import torch
import torch.nn.functional as F

import datafree as df
from datafree.compressors.quant.layers import quant_layers
from datafree.compressors.quant.reconstruct import AdaRoundRounding, find_blocks, reconstruct_, rounding_is_valid
from datafree.models.record import record_of
from datafree.models.spec import DIGITS_SPEC
from datafree.models.zoo import CifarResNet
from tests.conftest import measured


def test_adaround_starts_at_round_to_nearest_and_its_regularizer_is_the_formula():
    w = torch.tensor([[-1.7, -0.2, 0.49, 0.51, 2.93, 3.0]])
    r = AdaRoundRounding(w)
    r.hard = True
    assert torch.equal(r(w), torch.round(w).clamp(w.floor(), w.floor() + 1))
    r.hard = False
    h = torch.clamp(torch.sigmoid(r.V) * 1.2 - 0.1, 0, 1)
    assert torch.allclose(r.h(), h)
    assert torch.allclose(r(w), torch.floor(w) + h)
    for beta in (20.0, 2.0):
        assert torch.allclose(r.regularizer(beta), (1 - (2 * h - 1).abs().pow(beta)).sum())
    # at a high beta the term is ~1 for every h off 0/1 (flat: rounding is free to move); at beta 2 it is a parabola
    # whose slope pushes each h toward 0 or 1
    assert r.regularizer(20.0) > r.regularizer(2.0)


def test_adaround_on_a_model_without_residual_blocks(digits_teacher):
    m, _ = digits_teacher
    data = df.load_dataset("digits:train", record_of(m).input_spec).subset(128)
    q = df.quantize(m, data, df.QuantConfig(w_bits=4, a_bits=4, quantize_first_last=True, num_calib=128))
    before = {n: (copy.deepcopy(l.weight.detach()), l.w_scale.detach().clone()) for n, l in q.named_modules()
              if l in quant_layers(q)}
    report = reconstruct_(q, data, "adaround", iters=60, round_weight=0.01)
    assert [r["layers"] for r in report] == [[n] for n in before]  # one layer at a time, every layer
    for name, layer in q.named_modules():
        if name in before:
            w0, s = before[name]
            assert rounding_is_valid(w0, layer.weight.detach(), s, 4), name  # floor or ceil, on the 4-bit grid
    # measured in test_bounds_reconstruct.json, 20 runs: 0.69..0.80
    assert measured("adaround.mse_after_over_before", sum(r["mse_after"] for r in report) / sum(r["mse_before"] for r in report)) < 1
    test = df.load_dataset("digits:test", record_of(m).input_spec)
    assert measured("adaround.w4a4_top1", df.evaluate(q, test)["top1"]) > 50.0  # measured in test_bounds.json, 20 runs: 96.9..99.4


def test_brecq_blocks_come_from_tracing_and_lower_block_error():
    torch.manual_seed(0)
    from datafree.data.train import train_classifier_

    m = CifarResNet(8, 10, in_channels=1)
    record_of(m).input_spec = DIGITS_SPEC
    data = df.load_dataset("digits:train", DIGITS_SPEC)
    train_classifier_(m, data, epochs=3, seed=0)
    m.eval()
    calib = data.subset(128)
    q = df.quantize(m, calib, df.QuantConfig(w_bits=3, a_bits=4, num_calib=128, quantize_first_last=True))
    blocks = find_blocks(q)
    assert blocks == [["conv1"], ["layer1.0.conv1", "layer1.0.conv2"], ["layer2.0.conv1", "layer2.0.conv2"],
                      ["layer3.0.conv1", "layer3.0.conv2"], ["linear"]]
    report = reconstruct_(q, calib, "brecq", iters=60)
    assert [r["layers"] for r in report] == blocks
    # measured in test_bounds_reconstruct.json, 20 runs: 0.73..0.77
    assert measured("brecq.mse_after_over_before", sum(r["mse_after"] for r in report) / sum(r["mse_before"] for r in report)) < 1
    # as a quantize stage, recorded in the config
    q2 = df.quantize(m, calib, df.QuantConfig.from_flat(w_bits=3, a_bits=4, num_calib=128, reconstruct="adaround", recon_iters=20))
    assert record_of(q2).transforms[-1]["config"]["recon"]["method"] == "adaround" and "reconstruct" in record_of(q2).transforms[-1]["stages"]


def test_brecq_with_learned_activation_steps_moves_them_and_leaves_buffers(digits_teacher, tmp_path):
    from datafree.compressors.quant.graph import act_quantizers

    m, _ = digits_teacher
    calib = df.load_dataset("digits:train", record_of(m).input_spec).subset(128)
    test = df.load_dataset("digits:test", record_of(m).input_spec)
    cfg = df.QuantConfig(w_bits=4, a_bits=4, quantize_first_last=True, num_calib=128)
    q = df.quantize(m, calib, cfg)
    steps0 = [float(a.a_scale) for a in act_quantizers(q) if a.act_quant]
    plain = copy.deepcopy(q)
    reconstruct_(plain, calib, "brecq", iters=80, seed=0, learn_act=False)
    report = reconstruct_(q, calib, "brecq", iters=80, seed=0, learn_act=True)
    steps1 = [float(a.a_scale) for a in act_quantizers(q) if a.act_quant]
    # learning moved the step sizes (in each block's report, whichever set was kept afterwards: on some CPUs every block
    # of this tiny model keeps its calibrated steps), and each final step is either its calibrated or a learned value
    assert max(abs(a - b) / b for r in report for a, b in zip(r["learned_steps"], r["calibrated_steps"])) > 1e-3
    learned_vals = {v for r in report for v in r["learned_steps"]}
    assert len(steps1) == len(steps0) and all(a == b or a in learned_vals for a, b in zip(steps1, steps0))
    assert (steps1 != steps0) == any(r["act_steps"] == "learned" and r["learned_steps"] != r["calibrated_steps"]
                                     for r in report)
    assert all(not isinstance(a.a_scale, torch.nn.Parameter) and a.a_scale.dim() == 0 for a in act_quantizers(q))
    # measured in test_bounds_reconstruct.json, 20 runs: 0.48..0.76
    assert measured("brecq_act.mse_after_over_before", sum(r["mse_after"] for r in report) / sum(r["mse_before"] for r in report)) < 1
    # the per-block fallback: each block keeps whichever step sizes gave the lower block error with its learned rounding
    for r in report:
        assert r["mse_after"] == min(r["mse_learned_steps"], r["mse_calibrated_steps"])
        assert r["act_steps"] == ("calibrated" if r["mse_calibrated_steps"] < r["mse_learned_steps"] else "learned")
    # on held-out digits: still far better than calibration alone, and no gross loss against the steps kept. The ratio
    # err_act / err_plain depends on the teacher's float rounding (thread count, CPU): measured over 28 teacher trainings
    # on 1 and 2 threads 0.81-1.67 (mean 1.11), and 1.51 on the CI machine; err_act / calibrate-only <= 0.8 throughout
    with torch.no_grad():
        ref = m(test.x)
        err_act = F.mse_loss(q(test.x), ref).item()
        err_plain = F.mse_loss(plain(test.x), ref).item()
        wild = df.quantize(m, calib, cfg)  # calibration alone here; reconstructed below
        err_calib = F.mse_loss(wild(test.x), ref).item()
    # loose: the per-block fallback above is the property; held-out error is not guaranteed (measured in test_bounds_reconstruct.json, 20 runs: err / calibrate-only
    # 0.34..0.85, and 1.25 once in a full-suite run beside a heavy job, where the old bound < 1 failed; err / no-learned-
    # steps 0.94..2.96, where the old bound <= 2 would have failed)
    assert measured("brecq_act.err_over_calib", err_act / err_calib) < 2.5, (err_act, err_plain, err_calib)
    assert measured("brecq_act.err_over_plain", err_act / err_plain) <= 6.0, (err_act, err_plain, err_calib)
    # a step-size rate so high that the learned steps lose in every block: every block falls back to the calibrated ones
    rep = reconstruct_(wild, calib, "brecq", iters=30, seed=0, learn_act=True, act_lr=50.0)
    assert all(r["act_steps"] == "calibrated" for r in rep), [r["act_steps"] for r in rep]
    assert [float(a.a_scale) for a in act_quantizers(wild) if a.act_quant] == steps0
    # as a quantize stage (on by default): stored in the artifact and read back to the same predictions
    q2 = df.quantize(m, calib, cfg.replace(reconstruct="brecq", recon_iters=40))
    assert record_of(q2).transforms[-1]["config"]["recon"]["act"] is True
    path = tmp_path / "q.pt"
    df.save_artifact(q2, path)
    x = calib.x[:32]
    assert torch.equal(df.load_artifact(path)(x).argmax(1), q2(x).argmax(1))


def test_frozen_finetune_keeps_the_learned_integers_and_trains_steps_and_biases(digits_teacher, monkeypatch):
    from datafree.compressors.quant.qat import FrozenRounding
    from datafree.compressors.quant.quantizer import WeightRounding
    from datafree.kd.loop import KDConfig

    m, _ = digits_teacher
    calib = df.load_dataset("digits:train", record_of(m).input_spec).subset(256)
    test = df.load_dataset("digits:test", record_of(m).input_spec)
    cfg = df.QuantConfig.from_flat(w_bits=3, a_bits=3, quantize_first_last=True, num_calib=256, reconstruct="adaround",
                                   recon_iters=60)
    q = df.quantize(m, calib, cfg)

    def ints(model):
        return [torch.round(l.weight.detach() / l.w_scale.view(-1, *[1] * (l.weight.dim() - 1))) for l in quant_layers(model)]

    k0, s0, b0 = ints(q), [l.w_scale.clone() for l in quant_layers(q)], [l.bias.detach().clone() for l in quant_layers(q)]
    before = df.evaluate(q, test)["top1"]
    hist = df.finetune_quantized_(q, m, calib, KDConfig(steps=120, batch_size=64, lr=1e-3), progress=False,
                                  weights="frozen")
    # the loss only has to stay sane here (measured in test_bounds_reconstruct.json, 20 runs: ratio last/first 20 steps 0.78..0.97: "it falls" would sit inside the
    # spread); the integers, steps and biases below are the property
    assert measured("frozen_ft.loss_last_over_first", sum(h["loss"] for h in hist[-20:]) / sum(h["loss"] for h in hist[:20])) < 1.5
    for a, b in zip(k0, ints(q)):  # the same integers on every layer, at the new step sizes
        assert torch.equal(a, b)
    assert any(not torch.allclose(a, l.w_scale) for a, l in zip(s0, quant_layers(q)))
    assert any(not torch.allclose(a, l.bias) for a, l in zip(b0, quant_layers(q)))
    assert all(type(l.rounding) is WeightRounding and l.weight.requires_grad for l in quant_layers(q))
    # the integers, steps and biases are checked directly above; accuracy only loosely (measured in test_bounds.json and
    # test_bounds_reconstruct.json, 40 runs: drop -1.39..1.11 pt; the old bound of 1.0 failed once)
    assert measured("frozen_ft.drop", before - df.evaluate(q, test)["top1"]) <= 4.0
    with pytest.raises(df.DatafreeError, match="train or frozen"):
        df.finetune_quantized_(q, m, calib, KDConfig(steps=5), progress=False, weights="fixed")
    # an interrupted fine-tuning leaves no frozen layer behind and the weights on their integers
    import datafree.compressors.quant.qat as qat

    def boom(*a, **k):
        assert all(isinstance(l.rounding, FrozenRounding) and not l.weight.requires_grad for l in quant_layers(q))
        raise KeyboardInterrupt

    monkeypatch.setattr(qat, "distill_", boom)
    k1 = ints(q)
    with pytest.raises(KeyboardInterrupt):
        df.finetune_quantized_(q, m, calib, KDConfig(steps=5), progress=False, weights="frozen")
    assert not any(isinstance(l.rounding, FrozenRounding) for l in quant_layers(q))
    assert all(torch.equal(a, b) for a, b in zip(k1, ints(q)))
    monkeypatch.undo()
    # as a quantize option: recorded in the stored config; with train the integers move
    q2 = df.quantize(m, calib, cfg.replace(finetune_weights="frozen", recon_iters=20), kd=KDConfig(steps=20, batch_size=64))
    assert record_of(q2).transforms[-1]["config"]["finetune"]["weights"] == "frozen"
    q3 = df.quantize(m, calib, cfg.replace(recon_iters=20), kd=KDConfig(steps=60, batch_size=64, lr=1e-2))
    q4 = df.quantize(m, calib, cfg.replace(recon_iters=20))
    assert any(not torch.equal(a, b) for a, b in zip(ints(q3), ints(q4)))


def test_pareto_search_finds_the_brute_force_optimum():
    import itertools

    from datafree.compressors.quant.mixed import pareto_bits

    g = torch.Generator().manual_seed(0)
    names = [f"l{i}" for i in range(5)]
    params = {n: int(torch.randint(10, 500, (1,), generator=g)) for n in names}
    sens = {n: {b: float(torch.rand(1, generator=g)) * 2.0 ** -b * 10 for b in (2, 3, 4, 8)} for n in names}
    budget = 4.0 * sum(params.values())
    got = pareto_bits(sens, params, budget, resolution=10 ** 6)
    best = min((c for c in itertools.product((2, 3, 4, 8), repeat=5)
                if sum(params[n] * b for n, b in zip(names, c)) <= budget),
               key=lambda c: sum(sens[n][b] for n, b in zip(names, c)))
    assert tuple(got[n] for n in names) == best


def test_mixed_precision_plan_meets_the_budget_and_ships(digits_teacher, tmp_path):
    from datafree.compressors.artifact import load_artifact, save_artifact
    from datafree.compressors.quant.mixed import layer_sensitivity

    m, _ = digits_teacher
    data = df.load_dataset("digits:train", record_of(m).input_spec).subset(128)
    sens = layer_sensitivity(m, data, bits=(2, 4, 8))
    for per in sens.values():  # fewer bits, larger divergence from the float model
        assert per[2] > per[8] >= 0
    q = df.quantize(m, data, df.QuantConfig.from_flat(avg_bits=3.0, a_bits=8, num_calib=128))
    plan = record_of(q).quant_plan
    w = {e["name"]: q.get_submodule(e["name"]).weight.numel() for e in plan}
    avg = sum(w[e["name"]] * e["w_bits"] for e in plan) / sum(w.values())
    assert avg <= 3.0 + 1e-9 and len({e["w_bits"] for e in plan}) >= 1
    assert record_of(q).reports["quantize"]["mixed"]["avg_bits"] == avg
    save_artifact(q, tmp_path / "mx.pt")
    back = load_artifact(tmp_path / "mx.pt")
    assert [l.w_bits for l in quant_layers(back)] == [e["w_bits"] for e in plan]


def test_round_norm_sum_is_the_mean_loss_rescaled():
    # sum: squared error summed over the C output channels + w_s x regularizer summed over N weights
    #    = C x [output MSE + (w_s N / C) x mean regularizer per weight]; so where every layer has N / C = 9, sum at w_s
    # learns the same rounding as mean at 9 w_s (Adam is invariant to the constant factor C)
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Conv2d(1, 9, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                            torch.nn.Flatten(), torch.nn.Linear(9, 10)).eval()
    record_of(m).input_spec = DIGITS_SPEC
    data = df.load_dataset("digits:train", DIGITS_SPEC).subset(128)
    q = df.quantize(m, data, df.QuantConfig(w_bits=2, a_bits=8, quantize_first_last=True, num_calib=128))
    layers = quant_layers(q)
    assert [l.weight[0].numel() for l in layers] == [9, 9]  # N / C per layer
    runs = {}
    for norm, w in (("sum", 0.05), ("mean", 0.45), ("mean", 0.05)):
        qq = copy.deepcopy(q)
        rep = reconstruct_(qq, data, "adaround", iters=200, lr=0.3, round_weight=w, round_norm=norm, learn_act=False)
        runs[norm, w] = ([l.weight.detach().clone() for l in quant_layers(qq)], [r["mse_after"] for r in rep])
    (ws, es), (wm, em), (wl, _) = runs["sum", 0.05], runs["mean", 0.45], runs["mean", 0.05]
    assert all(torch.allclose(a, b) for a, b in zip(ws, wm)) and es == pytest.approx(em, rel=1e-5)
    assert not all(torch.equal(a, b) for a, b in zip(ws, wl))  # and the weight matters: 9x weaker rounds differently
    with pytest.raises(df.DatafreeError, match="round_norm must be sum or mean"):  # the config's declared check
        reconstruct_(copy.deepcopy(q), data, "adaround", iters=1, round_norm="max")
    with pytest.raises(df.DatafreeError, match="round_norm must be sum or mean"):  # caught with the config, before any work
        df.QuantConfig.from_flat(round_norm="max")


def test_qdrop_keeps_each_activation_float_with_its_probability_and_only_while_learning(digits_teacher):
    from datafree.compressors.quant.quantizer import drop_quant

    x = torch.linspace(-1, 1, 20000)
    xq = torch.round(x * 4) / 4
    g = torch.Generator().manual_seed(0)
    y = drop_quant(x, xq, (0.5, g))
    kept_float = (y == x) & (x != xq)
    differs = x != xq
    assert torch.all((y == x) | (y == xq))  # every element is its float or its quantized value
    assert abs(kept_float.sum().item() / differs.sum().item() - 0.5) < 0.02  # about half kept float
    assert torch.equal(drop_quant(x, xq, None), xq) and torch.equal(drop_quant(x, xq, (0.0, g)), xq)

    m, _ = digits_teacher
    calib = df.load_dataset("digits:train", record_of(m).input_spec).subset(128)
    cfg = df.QuantConfig(w_bits=3, a_bits=3, quantize_first_last=True, num_calib=128)
    q = df.quantize(m, calib, cfg)
    runs = []
    for drop in (0.5, 0.5, 0.0):
        qq = copy.deepcopy(q)
        rep = reconstruct_(qq, calib, "brecq", iters=40, seed=0, drop=drop)
        assert not any("qdrop" in vars(mod) for mod in qq.modules())  # nothing left dropping after reconstruction
        runs.append(([l.weight.detach().clone() for l in quant_layers(qq)], rep))
    (w1, r1), (w2, r2), (w0, r0) = runs
    assert all(torch.equal(a, b) for a, b in zip(w1, w2)) and r1 == r2  # seeded: the same drops, the same rounding
    assert not all(torch.equal(a, b) for a, b in zip(w1, w0))  # dropping changes what is learned
    # errors measured without dropping (measured in test_bounds_reconstruct.json, 20 runs: 0.61..0.77)
    assert measured("qdrop.mse_after_over_before", sum(r["mse_after"] for r in r1) / sum(r["mse_before"] for r in r1)) < 1
    with pytest.raises(df.DatafreeError, match="recon_drop must be < 1"):
        reconstruct_(copy.deepcopy(q), calib, "brecq", iters=1, drop=1.0)
    with pytest.raises(df.DatafreeError, match="recon_drop"):
        df.QuantConfig.from_flat(recon_drop=-0.1)


class _SizeBeforeBlocks(torch.nn.Module):
    """Reads the batch size at the input and uses it after the last conv, as EfficientNet's head does."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv2d(1, 8, 3, padding=1)
        self.bn1 = torch.nn.BatchNorm2d(8)
        self.conv2 = torch.nn.Conv2d(8, 8, 3, padding=1)
        self.fc = torch.nn.Linear(8, 10)

    def forward(self, x):
        n = x.size(0)
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.conv2(x)).mean((2, 3))
        return self.fc(x.view(n, -1))


@pytest.mark.parametrize("mode", ["adaround", "brecq"])
def test_a_batch_size_read_before_a_block_follows_the_reconstruction_batch(mode):
    torch.manual_seed(0)
    m = _SizeBeforeBlocks().eval()
    record_of(m).input_spec = DIGITS_SPEC
    data = df.load_dataset("digits:train", DIGITS_SPEC).subset(40)
    q = df.quantize(m, data, df.QuantConfig(w_bits=4, a_bits=8, num_calib=40))
    x = data.x[:5]
    before = q(x)
    report = reconstruct_(q, data, mode, iters=5, batch_size=16)  # captures run 40 at a time, learning 16 at a time
    assert len(report) == 3 and q(x).shape == before.shape  # every layer sits directly under the root


def test_bias_correction_refuses_a_reconstructed_model(digits_teacher):
    """After reconstruction the float weights are gone (the learned rounding is baked in): bias correction would see no
    shift and silently undo the earlier one (EfficientNet-Lite0 W4A8: 74.8 -> 14.1 %); it refuses instead, the biases
    untouched."""
    from datafree.compressors.quant import correct_bias_
    from datafree.core.errors import DatafreeError

    m, _ = digits_teacher
    data = df.load_dataset("digits:train", record_of(m).input_spec).subset(64)
    q = df.quantize(m, data, df.QuantConfig(w_bits=4, a_bits=4, quantize_first_last=True, num_calib=64))
    correct_bias_(q, data)  # float weights still there: fine
    reconstruct_(q, data, "adaround", iters=5)
    biases = [l.bias.detach().clone() for l in quant_layers(q)]
    with pytest.raises(DatafreeError, match="already rounded"):
        correct_bias_(q, data)
    assert all(torch.equal(b, l.bias) for b, l in zip(biases, quant_layers(q)))
