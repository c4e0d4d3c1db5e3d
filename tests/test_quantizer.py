import copy

import pytest
import torch
import torch.nn as nn

from datafree.compressors.quant import QuantLayer, act_qparams, fake_quant, quant_layers, quantize_int, weight_scales
from datafree.compressors.quant.quantizer import mse_range
from datafree.models.record import record_of


def test_signed_weight_grid_by_hand():
    # scale 0.5 at 4 bits: grid is -8..7 -> values -4.0 .. 3.5
    w = torch.tensor([0.26, -0.74, 1.1, 3.9, -5.0, 0.0])
    s = torch.tensor(0.5)
    z = torch.tensor(0.0)
    ints = quantize_int(w, s, z, -8, 7)
    assert ints.tolist() == [1.0, -1.0, 2.0, 7.0, -8.0, 0.0]
    torch.testing.assert_close(fake_quant(w, s, z, -8, 7), ints * 0.5)


def test_unsigned_activation_grid_by_hand():
    s, z = act_qparams(0.0, 1.5, 2)  # 2 bits: 4 levels over [0, 1.5]
    assert abs(s - 0.5) < 1e-9 and z == 0
    x = torch.tensor([-0.3, 0.2, 0.3, 0.74, 1.4, 9.0])
    q = fake_quant(x, torch.tensor(s), torch.tensor(float(z)), 0, 3)
    torch.testing.assert_close(q, torch.tensor([0.0, 0.0, 0.5, 0.5, 1.5, 1.5]))
    s2, z2 = act_qparams(-1.0, 3.0, 2)  # asymmetric: zero point 1 (=round(1/ (4/3)))
    assert abs(s2 - 4 / 3) < 1e-9 and z2 == 1.0


def test_ste_gradient_is_identity_inside_range():
    x = torch.tensor([0.3, 0.7, 5.0], requires_grad=True)
    fake_quant(x, torch.tensor(0.25), torch.tensor(0.0), 0, 7).sum().backward()
    assert x.grad.tolist() == [1.0, 1.0, 0.0]  # STE inside the range, zero once clamped (5.0 / 0.25 > 7)


def test_mse_weight_clipping_beats_minmax_with_outlier():
    torch.manual_seed(0)
    w = torch.randn(4, 64)
    w[0, 0] = 20.0  # outlier in channel 0
    s_mm = weight_scales(w, 4, "minmax")
    s_mse = weight_scales(w, 4, "mse")
    torch.testing.assert_close(s_mm, w.abs().amax(1) / 7)
    assert s_mse[0] < s_mm[0]

    def err(s):
        q = fake_quant(w, s[:, None], torch.tensor(0.0), -8, 7)
        return (q - w).pow(2).sum(1)

    assert torch.all(err(s_mse) <= err(s_mm) + 1e-6)


def test_mse_range_clips_long_tail():
    torch.manual_seed(0)
    x = torch.cat([torch.rand(10000), torch.tensor([50.0])])
    lo, hi = mse_range(x, 0.0, 50.0, 4)

    def err(h):
        s, z = act_qparams(0.0, h, 4)
        return (fake_quant(x, torch.tensor(s), torch.tensor(z), 0, 15) - x).pow(2).mean().item()

    brute = min(err(h) for h in torch.linspace(0.5, 50.0, 2000).tolist())
    assert lo == 0.0 and hi < 25.0
    assert err(hi) <= 1.02 * brute and err(hi) < 0.8 * err(50.0)


def test_bn_folding_is_exact_in_float():
    torch.manual_seed(0)
    conv, bn = nn.Conv2d(3, 6, 3, padding=1, bias=True), nn.BatchNorm2d(6)
    bn.running_mean.uniform_(-1, 1), bn.running_var.uniform_(0.2, 3), bn.weight.data.uniform_(-2, 2)
    bn.eval()
    x = torch.randn(4, 3, 8, 8)
    q = QuantLayer(conv, bn, w_bits=32, a_bits=32)
    torch.testing.assert_close(q(x), bn(conv(x)), atol=1e-5, rtol=1e-5)


def test_folded_bn_reestimation_equals_pytorch_bn_reestimation():
    torch.manual_seed(0)
    conv, bn = nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6)
    bn.weight.data.uniform_(-2, 2), bn.bias.data.uniform_(-1, 1)
    bn.eval()
    data = [torch.randn(16, 3, 8, 8) * 2 + 1 for _ in range(3)]
    q = QuantLayer(conv, bn, w_bits=32, a_bits=32)
    ref_bn = copy.deepcopy(bn)
    ref_bn.reset_running_stats(), ref_bn.train()
    ref_bn.momentum = None
    q.begin_bn_reestimate()
    with torch.no_grad():
        for xb in data:
            ref_bn(conv(xb))
            q(xb)
    q.end_bn_reestimate()
    ref_bn.eval()
    # PyTorch keeps the unbiased variance; ours the biased one: match that convention for the check
    n = 16 * 8 * 8
    ref_bn.running_var.mul_((n - 1) / n)
    x = torch.randn(4, 3, 8, 8)
    torch.testing.assert_close(q(x), ref_bn(conv(x)), atol=1e-4, rtol=1e-4)


def test_weight_rounding_is_a_swappable_module():
    from datafree.compressors.quant import QuantLayer, WeightRounding

    class Floor(WeightRounding):
        def forward(self, w_over_s):
            return torch.floor(w_over_s)

    lin = torch.nn.Linear(3, 2)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[0.26, -0.74, 0.5], [1.0, 0.1, -0.3]]))
    q = QuantLayer(lin, None, w_bits=4, a_bits=32)
    with torch.no_grad():
        q.w_scale.copy_(torch.tensor([0.1, 0.25]))
    s = q.w_scale[:, None]
    assert torch.equal(q.quant_weight(), torch.round(q.weight / s).clamp(-8, 7) * s)  # default: nearest
    q.set_rounding(Floor())
    assert torch.equal(q.quant_weight(), torch.tensor([[2.0, -8.0, 5.0], [4.0, 0.0, -2.0]]) * s)  # floor, clamped to -8
    assert set(q.state_dict()) == set(QuantLayer(lin, None, 4, 32).state_dict())  # stateless rounding adds no keys
    with pytest.raises(TypeError):
        q.set_rounding(torch.nn.Identity())


def test_quantize_runs_named_stages_and_a_stage_can_be_inserted(digits_teacher):
    import datafree as df
    from datafree.compressors.quant import STAGES, QuantConfig, quantize, with_stage

    m, _ = digits_teacher
    data = df.load_dataset("digits:train", record_of(m).input_spec).subset(64)
    seen = []

    def probe(st):
        seen.append([q.act_quant for q in quant_layers(st.qmodel)])

    stages = with_stage("probe", probe, after="weight_scales")
    assert [n for n, _ in stages] == ["fold", "weight_scales", "probe", "calibrate", "bias_correct", "bn_reestimate",
                                      "reconstruct", "finetune"]
    q = quantize(m, data, QuantConfig(w_bits=4, a_bits=4), stages=stages)
    assert seen and not any(seen[0])  # ran before calibration
    assert record_of(q).transforms[-1]["stages"] == [n for n, _ in stages]
    q0 = quantize(m, data, QuantConfig(w_bits=4, a_bits=4))
    assert [n for n, _ in STAGES] == record_of(q0).transforms[-1]["stages"]
    x = data.x[:16]
    with torch.no_grad():
        assert torch.equal(q(x), q0(x))  # an observing stage changes nothing
    with pytest.raises(df.DatafreeError, match="no quantization stage"):
        with_stage("x", probe, after="nope")


def test_quantize_draws_its_calibration_samples_from_any_source(digits_teacher):
    import datafree as df
    from datafree.compressors.quant import QuantConfig, quantize
    from datafree.data.source import Batch, Source

    m, _ = digits_teacher
    real = df.load_dataset("digits:train", record_of(m).input_spec)

    class Stream(Source):
        """A source that is no stored set: consecutive items, as a generator would hand them out."""
        name = "stream"

        def __init__(self):
            self.pos, self.calls = 0, 0

        def __len__(self):
            return len(real)

        def sample(self, batch_size, generator=None):
            self.calls += 1
            i = self.pos
            self.pos += batch_size
            return Batch(real.x[i:i + batch_size], real.y[i:i + batch_size])

    src = Stream()
    q = quantize(m, src, QuantConfig(w_bits=4, a_bits=4, num_calib=64))
    assert src.calls == 1 and src.pos == 64  # it drew exactly the samples it needs
    ref = quantize(m, df.TensorData(real.x[:64], real.y[:64]), QuantConfig(w_bits=4, a_bits=4, num_calib=64))
    with torch.no_grad():
        assert torch.equal(q(real.x[:32]), ref(real.x[:32]))


def _conv_bn_relu_conv_bn() -> nn.Module:
    """conv-BN-ReLU-conv-BN on 2x6x6 inputs with random BN statistics and affine parameters (seeded)."""
    from datafree.models import InputSpec

    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 3, 1), nn.BatchNorm2d(3)).eval()
    with torch.no_grad():
        for bn in (m[1], m[4]):
            bn.running_mean.uniform_(-0.5, 0.5), bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5), bn.bias.uniform_(-0.3, 0.6)
    record_of(m).input_spec = InputSpec((2, 6, 6), (0.0, 0.0), (1.0, 1.0), 3)
    return m


def test_bias_correction_with_bn_moments_moves_the_passed_output_to_the_bn_statistics():
    """moments="bn": the first layer is corrected as with the samples; the output it passes on has the folded BN's mean
    β per channel (and std |γ| for the float output), and the second layer's shift is computed on that (direct computation). So the second
    layer's correction is the same for samples a·x + c (scale and offset come from the model), unlike moments="samples"."""
    import torch.nn.functional as F

    import datafree as df
    from datafree.compressors.quant import QuantConfig, correct_bias_, quantize

    m = _conv_bn_relu_conv_bn()
    x = torch.rand(40, 2, 6, 6) + 0.5
    cfg = QuantConfig(w_bits=3, a_bits=32, quantize_first_last=True, num_calib=40)
    q = quantize(m, df.TensorData(x, torch.zeros(40, dtype=torch.long)), cfg)
    first, second = quant_layers(q)
    b1, b2 = first.bias.detach().clone(), second.bias.detach().clone()
    correct_bias_(q, df.TensorData(x, torch.zeros(40, dtype=torch.long)), "bn")
    with torch.no_grad():
        y_float = F.conv2d(x, first.weight, b1)
        y = F.conv2d(x, first.quant_weight(), b1)
        shift = (y_float - y).mean((0, 2, 3))
        assert torch.allclose(first.bias, b1 + shift, atol=1e-6)
        sd = y_float.std((0, 2, 3)).view(1, -1, 1, 1)
        passed = (y + shift.view(1, -1, 1, 1) - y_float.mean((0, 2, 3)).view(1, -1, 1, 1)) * (m[1].weight.abs().view(1, -1, 1, 1) / sd) \
            + m[1].bias.view(1, -1, 1, 1)
        assert torch.allclose(passed.mean((0, 2, 3)), m[1].bias, atol=1e-5)
        # the float output is moved to std |γ| exactly; the quantized output passed on follows with the same factor
        assert torch.allclose(passed.std((0, 2, 3)), m[1].weight.abs(), rtol=0.05)
        h = torch.relu(passed)
        shift2 = (F.conv2d(h, second.weight, b2) - F.conv2d(h, second.quant_weight(), b2)).mean((0, 2, 3))
        assert shift2.abs().max() > 1e-3
        assert torch.allclose(second.bias, b2 + shift2, atol=1e-5)
    corr = {}
    for moments in ("bn", "samples"):
        for k, xs in (("x", x), ("ax+c", 3.0 * x - 0.7)):
            correct_bias_(q, df.TensorData(xs, torch.zeros(40, dtype=torch.long)), moments)
            corr[moments, k] = second.bias_corr.clone()
    assert torch.allclose(corr["bn", "x"], corr["bn", "ax+c"], atol=1e-5)
    assert not torch.allclose(corr["samples", "x"], corr["samples", "ax+c"], atol=1e-3)
    with pytest.raises(ValueError, match="moments"):
        correct_bias_(q, df.TensorData(x, torch.zeros(40, dtype=torch.long)), "real")


def test_bias_correction_makes_each_layers_mean_output_the_float_one():
    """Two layers at 3-bit weights, float inputs: after correction the first layer's mean output over the data equals
    the float layer's (per channel), and the second's equals its float weights' on the corrected first output."""
    import torch.nn.functional as F

    import datafree as df
    from datafree.compressors.quant import QuantConfig, correct_bias_, quantize
    from datafree.models import InputSpec

    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 3)).eval()
    record_of(m).input_spec = InputSpec((2, 6, 6), (0.0, 0.0), (1.0, 1.0), 3)
    x = torch.rand(40, 2, 6, 6) + 0.5  # positive inputs: a weight error shifts the mean output
    data = df.TensorData(x, torch.zeros(40, dtype=torch.long))
    cfg = QuantConfig(w_bits=3, a_bits=32, quantize_first_last=True, num_calib=40)
    q = quantize(m, data, cfg)
    conv, lin = quant_layers(q)
    b_conv, b_lin = conv.bias.detach().clone(), lin.bias.detach().clone()
    assert correct_bias_(q, data) == 40
    with torch.no_grad():
        yq = F.conv2d(x, conv.quant_weight(), b_conv)
        shift = (F.conv2d(x, conv.weight, b_conv) - yq).mean((0, 2, 3))
        assert shift.abs().max() > 1e-3  # there was a shift to correct
        assert torch.allclose(conv.bias, b_conv + shift, atol=1e-6)
        h = torch.relu(F.conv2d(x, conv.quant_weight(), conv.bias)).flatten(1)
        assert torch.allclose(lin.bias, b_lin + (F.linear(h, lin.weight, b_lin) - F.linear(h, lin.quant_weight(), b_lin)).mean(0), atol=1e-5)
        assert torch.allclose(F.conv2d(x, conv.quant_weight(), conv.bias).mean((0, 2, 3)),
                              F.conv2d(x, conv.weight, b_conv).mean((0, 2, 3)), atol=1e-5)
    assert not any("correcting" in vars(layer) for layer in (conv, lin))  # the flag is gone after the pass
    from datafree.compressors.quant.graph import float_twin

    assert torch.allclose(quant_layers(float_twin(q))[0].bias, b_conv)  # the float model keeps its own bias
    assert correct_bias_(q, data) == 40 and torch.allclose(conv.bias, b_conv + shift, atol=1e-6)  # replaced, not added
    old = {k: v for k, v in q.state_dict().items() if not k.endswith("bias_corr")}  # a file from before the buffer
    q3 = copy.deepcopy(q)
    q3.load_state_dict(old)
    assert all(not layer.bias_corr.any() for layer in quant_layers(q3))
    # as a stage: recorded, the same biases
    q2 = quantize(m, data, QuantConfig(w_bits=3, a_bits=32, quantize_first_last=True, num_calib=40, bias_correct=True))
    assert torch.allclose(quant_layers(q2)[0].bias, conv.bias) and record_of(q2).reports["quantize"]["bias_correct"] == {"samples": 40,
                                                                                                                   "moments": "bn"}


def test_bias_correction_with_bn_moments_only_moves_a_channel_that_does_not_vary():
    """A channel whose float output is constant on the samples (weights [1, 0.5, -1] on inputs with x2 = x0 + 0.5·x1)
    while its 3-bit weights' output is not, is moved to the BN mean, not scaled by |γ| / ~0: what it passes on stays
    within its own small fluctuation of β."""
    import torch.nn.functional as F

    import datafree as df
    from datafree.compressors.quant import QuantConfig, correct_bias_, quantize
    from datafree.models import InputSpec

    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 3, 1), nn.BatchNorm2d(3)).eval()
    with torch.no_grad():
        m[0].weight[2] = torch.tensor([1.0, 0.5, -1.0]).view(3, 1, 1)
        m[1].weight.fill_(2.0)
        m[1].bias.fill_(1.0)
    record_of(m).input_spec = InputSpec((3, 6, 6), (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), 3)
    x = torch.rand(40, 3, 6, 6)
    x[:, 2] = x[:, 0] + 0.5 * x[:, 1]
    data = df.TensorData(x, torch.zeros(40, dtype=torch.long))
    q = quantize(m, data, QuantConfig(w_bits=3, a_bits=32, quantize_first_last=True, num_calib=40))
    first, second = quant_layers(q)
    with torch.no_grad():
        assert F.conv2d(x, first.weight, first.bias)[:, 2].std() < 1e-5  # constant in float
        assert F.conv2d(x, first.quant_weight(), first.bias)[:, 2].std() > 1e-2  # not with 3-bit weights
    seen = {}
    second.register_forward_pre_hook(lambda mod, inp: seen.__setitem__("x", inp[0].detach().clone()))
    correct_bias_(q, data, "bn")
    passed = seen["x"][:, 2]  # ReLU of the first layer's passed-on output, channel 2
    assert torch.isfinite(passed).all() and torch.isfinite(second.bias).all()
    assert (passed - 1.0).abs().max() < 0.5 and abs(passed.mean().item() - 1.0) < 1e-4


def test_activation_ranges_on_bn_moments_observe_the_moved_activations():
    """ranges_from="bn" (direct computation, min/max ranges, float weights): the second layer's input range is that of
    ReLU(first output moved to its BN's mean β and std |γ|), not of the samples' own; the samples' scale and offset
    (3x − 0.7) then change the shape of nothing but the range of the first layer's input."""
    import torch.nn.functional as F

    import datafree as df
    from datafree.compressors.quant import QuantConfig, quantize

    m = _conv_bn_relu_conv_bn()
    x = torch.rand(40, 2, 6, 6)

    def second_range(data: torch.Tensor, moments: str, bits: int = 8) -> float:
        cfg = QuantConfig(w_bits=32, a_bits=bits, quantize_first_last=True, num_calib=40, act_method="minmax",
                          ranges_from=moments, layout="inputs")
        q = quantize(m, df.TensorData(data, torch.zeros(40, dtype=torch.long)), cfg)
        second = quant_layers(q)[1]
        return float(second.a_scale) * (2 ** bits - 1)

    first = quant_layers(quantize(m, df.TensorData(x, torch.zeros(40, dtype=torch.long)),
                                  QuantConfig(w_bits=32, a_bits=32, quantize_first_last=True, num_calib=40)))[0]
    with torch.no_grad():
        y1 = F.conv2d(x, first.weight, first.bias)
        sd, mu = y1.std((0, 2, 3)), y1.mean((0, 2, 3))
        moved = (y1 - mu.view(1, -1, 1, 1)) * (m[1].weight.abs() / sd).view(1, -1, 1, 1) + m[1].bias.view(1, -1, 1, 1)
        assert second_range(x, "bn") == pytest.approx(float(torch.relu(moved).max()), rel=1e-4)
        assert second_range(x, "samples") == pytest.approx(float(torch.relu(y1).max()), rel=1e-4)
    # with bn moments the samples' own scale and offset do not reach the second layer's range
    assert second_range(3 * x - 0.7, "bn") == pytest.approx(second_range(x, "bn"), rel=1e-3)
    assert second_range(3 * x - 0.7, "samples") != pytest.approx(second_range(x, "samples"), rel=0.05)
    # the default (auto): the BN moments below 8-bit activations, the samples' own at 8 bits
    assert second_range(x, "auto", 4) == second_range(x, "bn", 4) != pytest.approx(second_range(x, "samples", 4), rel=0.05)
    assert second_range(x, "auto") == second_range(x, "samples") and QuantConfig().ranges_from == "auto"
    with pytest.raises(ValueError, match="moments"):
        from datafree.compressors.quant.ptq import calibrate_activations_

        calibrate_activations_(m, df.TensorData(x, torch.zeros(40, dtype=torch.long)), QuantConfig(), "data")
