"""GPTQ rounding: the input second moments against a direct computation, the column update on hand-made cases, and the
quantize stage (one pass with bias correction, weights on the grid, the file round trip)."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import datafree as df
from datafree.compressors.quant import QuantConfig, quant_layers
from datafree.compressors.quant.gptq import _pair, gptq_ints, grouped, input_moments
from datafree.core.errors import DatafreeError
from datafree.models.record import record_of
from tests.conftest import measured


def _patches(x: torch.Tensor, k: int, stride: int, pad: int, groups: int) -> torch.Tensor:
    """Every input patch of a conv, by slicing: [groups, positions, C/groups * k * k] (channel-major, as weight[o])."""
    xp = F.pad(x, (pad, pad, pad, pad))
    n, c, h, w = xp.shape
    rows = []
    for b in range(n):
        for i in range(0, h - k + 1, stride):
            for j in range(0, w - k + 1, stride):
                rows.append(xp[b, :, i:i + k, j:j + k].reshape(groups, -1))
    return torch.stack(rows, 1)


@pytest.mark.parametrize("k,stride,pad,groups", [(3, 1, 1, 1), (3, 2, 1, 2), (5, 1, 2, 4), (1, 2, 0, 1), (1, 1, 0, 2)])
def test_input_moments_are_the_sum_of_patch_outer_products(k, stride, pad, groups):
    torch.manual_seed(0)
    x = torch.randn(3, 4, 7, 6)
    conv = nn.Conv2d(4, 8, k, stride=stride, padding=pad, groups=groups)
    args = dict(stride=conv.stride, padding=conv.padding, dilation=conv.dilation, groups=groups)
    h = input_moments("conv2d", args, conv.weight.shape, x)
    p = _patches(x.double(), k, stride, pad, groups)
    assert h.shape == (groups, 4 // groups * k * k, 4 // groups * k * k)
    assert torch.allclose(h, torch.einsum("gpi,gpj->gij", p, p), atol=1e-9)
    # the ordering matches the weight's: the conv's output is each row of weight times a patch
    y = F.conv2d(x.double(), conv.weight.double(), None, stride=stride, padding=pad, groups=groups)
    w = grouped(conv.weight.double(), groups)  # [g, out/g, D]
    direct = torch.einsum("grd,gpd->gpr", w, p)  # [g, positions, out/g]
    assert torch.allclose(direct.permute(1, 0, 2).reshape(-1, 8), y.permute(0, 2, 3, 1).reshape(-1, 8), atol=1e-9)


def test_input_moments_of_a_linear_layer_over_leading_dims():
    x = torch.randn(2, 5, 3)
    h = input_moments("linear", {}, torch.Size([4, 3]), x)
    flat = x.reshape(-1, 3).double()
    assert torch.allclose(h[0], flat.T @ flat)


def test_gptq_without_correlations_is_round_to_nearest():
    torch.manual_seed(0)
    w = torch.randn(2, 3, 6)
    s = torch.full((2, 3), 0.3)
    h = torch.diag_embed(torch.rand(2, 6) + 0.5)  # independent inputs: no error is passed on
    ints = gptq_ints(w, s, h, bits=4, damp=0.0)
    assert torch.equal(ints, torch.clamp(torch.round(w / 0.3), -8, 7).double())


def test_gptq_passes_a_columns_error_to_a_correlated_column():
    # two inputs that are always equal: the output is (w1 + w2) x = 0.8 x. Nearest rounds both 0.4 to 0 (output 0);
    # GPTQ rounds the first to 0 and moves its error 0.4 onto the second (0.4 + 0.4 -> 1): output x, error 0.2 not 0.8
    w = torch.tensor([[[0.4, 0.4]]])
    h = torch.tensor([[[1.0, 1.0], [1.0, 1.0]]])
    ints = gptq_ints(w, torch.ones(1, 1), h, bits=4, damp=1e-6, act_order=False)
    assert ints.tolist() == [[[0.0, 1.0]]]
    # act order takes the column with more input energy first: here the second, which passes its error to the first
    h2 = torch.tensor([[[1.0, 1.0], [1.0, 2.0]]])
    ints2 = gptq_ints(w, torch.ones(1, 1), h2, bits=4, damp=1e-6, act_order=True)
    assert ints2.tolist() == [[[1.0, 0.0]]]
    # clamped to the grid: 2 bits hold -2..1
    assert gptq_ints(torch.tensor([[[3.0, -5.0]]]), torch.ones(1, 1), torch.eye(2)[None], bits=2).tolist() == [[[1.0, -2.0]]]


def test_gptq_stage_rounds_on_the_grid_lowers_layer_error_and_survives_the_file(digits_teacher, digits_test, tmp_path):
    m, _ = digits_teacher
    data = df.load_dataset("digits:train", record_of(m).input_spec).subset(128)
    base = dict(w_bits=3, a_bits=8, num_calib=128, bias_correct=True, bias_from="samples")
    near = df.quantize(m, data, QuantConfig.from_flat(**base))
    q = df.quantize(m, data, QuantConfig.from_flat(**base, reconstruct="gptq"))
    rep = record_of(q).reports["quantize"]
    g = rep["gptq"]
    assert g["samples"] == 128 and g["layers"] == sum(layer.w_bits < 32 for layer in quant_layers(q))
    assert rep["bias_correct"] == {"samples": 128, "moments": "samples"}
    # measured in test_bounds_gptq.json, 10 runs (seeds, threads, a busy machine): 0.080..0.098
    assert measured("gptq.w3_error_ratio", g["output_error_gptq"] / g["output_error_nearest"]) < 0.2
    for layer in quant_layers(q):  # the rounding is in the weights: on the grid, round-to-nearest gives it back
        assert torch.allclose(layer.weight, layer.quant_weight(), atol=1e-6 * float(layer.w_scale.max()))
        assert bool(layer.bias_corr.abs().sum() > 0)  # corrected in the same pass
    top_near, top = df.evaluate(near, digits_test)["top1"], df.evaluate(q, digits_test)["top1"]
    # the same 10 runs: -0.28..0.83 (small_cnn holds W3A8 with bias correction alone)
    assert measured("gptq.w3a8_top1_minus_nearest", top - top_near) > -1.0
    path = tmp_path / "q.pt"
    df.save_artifact(q, path)
    again = df.load_artifact(path)
    x = digits_test.x[:16]
    assert torch.equal(again(x), q(x))


def test_gptq_refuses_bn_reestimation_and_a_rounded_model(digits_teacher):
    m, _ = digits_teacher
    with pytest.raises(DatafreeError, match="gptq"):
        QuantConfig.from_flat(w_bits=4, reconstruct="gptq", bn_reestimate=True)
    data = df.load_dataset("digits:train", record_of(m).input_spec).subset(32)
    q = df.quantize(m, data, QuantConfig.from_flat(w_bits=4, num_calib=32, reconstruct="gptq"))
    from datafree.compressors.quant.ptq import gptq_

    with pytest.raises(DatafreeError, match="already rounded"):
        gptq_(q, data)


def test_cli_quantize_with_gptq_reports_it(digits_teacher, tmp_path, capsys):
    import json

    from datafree.cli import main

    args = ["quantize", "small_cnn", "--weights", digits_teacher[1], "--calib", "digits:train", "--num-calib", "64",
            "--w-bits", "4", "--bias-correct", "--reconstruct", "gptq", "--gptq-damp", "0.05",
            "--out", str(tmp_path / "q.pt"), "--json", "--no-progress"]
    assert main(args) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["gptq"]["damp"] == 0.05 and info["gptq"]["samples"] == 64
    assert info["gptq"]["output_error_gptq"] < info["gptq"]["output_error_nearest"]
    q = df.load_artifact(tmp_path / "q.pt")
    assert record_of(q).quant_config.recon.method == "gptq"


@pytest.mark.parametrize("k,stride", [(3, 2), (5, 1), (1, 1)])
def test_input_moments_of_a_same_padding_subclass_include_its_own_padding(k, stride):
    """A conv that pads inside forward (the EfficientNet package's) has padding 0 in its arguments: GPTQ's H must be
    taken over the padded patches its conv2d call sees, not over the unpadded input."""
    from datafree.compressors.quant.layers import QuantLayer
    from tests.test_subclass_layers import SameConv

    torch.manual_seed(0)
    conv = SameConv(4, 6, k, stride=stride, image_size=8)
    q = QuantLayer(conv, None, 4, 8)
    x = torch.randn(2, 4, 8, 8)
    xin, args = q.op_input(x)
    padded = conv.static_padding(x)  # stride 2, k 3 on 8 px: TensorFlow's asymmetric (0, 1)
    assert torch.equal(xin, padded) and _pair(args["padding"]) == (0, 0)
    h = input_moments("conv2d", args, conv.weight.shape, xin)
    p = _patches(padded.double(), k, stride, 0, 1)
    assert torch.allclose(h, torch.einsum("gpi,gpj->gij", p, p), atol=1e-9)
    # the layer's output is the padded patches times the weight rows: these are the patches that matter
    y = F.conv2d(xin.double(), conv.weight.double(), None, stride=stride)
    assert torch.allclose(y, conv.double()(x.double()), atol=1e-9)
    if padded.shape != x.shape:  # the unpadded input (the moments before this fix) misses the border patches
        assert not torch.allclose(h, input_moments("conv2d", q.conv_args, conv.weight.shape, x), atol=1e-3)
    plain = QuantLayer(nn.Conv2d(4, 6, k, stride=stride, padding=k // 2), None, 4, 8)
    assert plain.op_input(x)[0] is x and plain.op_input(x)[1] is plain.conv_args
