"""The fused integer layout: one quantizer per tensor, residual adds quantized, int32 biases; onnxruntime fuses it."""
import collections
import operator

import numpy as np
import pytest
import torch
import torch.nn as nn

import datafree as df
from datafree.compressors.quant.graph import TensorQuant, act_quantizers, tensor_quants
from datafree.compressors.quant.layers import QuantLayer, quant_layers
from datafree.core.errors import DatafreeError
from datafree.models.record import record_of
from datafree.models.spec import DIGITS_SPEC
from datafree.models.zoo import CifarResNet, MobileNetV2


def _trained(model: nn.Module) -> nn.Module:
    from datafree.data.train import train_classifier_

    record_of(model).input_spec = DIGITS_SPEC
    train_classifier_(model, df.load_dataset("digits:train", DIGITS_SPEC), epochs=4, seed=0)
    return model.eval()


@pytest.fixture(scope="module")
def tiny_resnet():
    torch.manual_seed(0)
    return _trained(CifarResNet(8, 10, in_channels=1))  # identity shortcut in layer1, option-A (slice+pad) after


@pytest.fixture(scope="module")
def tiny_mobilenet():
    torch.manual_seed(0)
    return _trained(MobileNetV2(10, 1, width=0.5, stages=((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 2, 2)), last=64))


def _adds(q):
    return [n for n in q.graph.nodes if n.op == "call_function" and n.target in (operator.add, torch.add)]


def test_every_add_reads_quantized_tensors_and_shortcuts_share_the_conv_grid(tiny_resnet):
    data = df.load_dataset("digits:train", DIGITS_SPEC)
    q = df.quantize(tiny_resnet, data, df.QuantConfig(num_calib=64))
    mods = dict(q.named_modules())
    adds = _adds(q)
    assert len(adds) == 3
    for a in adds:
        for x in a.args[:2]:
            assert x.op == "call_module" and isinstance(mods[x.target], TensorQuant)
    # the block input is quantized once with its conv1's (scale, zero); the shortcut operand carries the same grid
    for blk in ("layer1.0", "layer2.0", "layer3.0"):
        conv1 = q.get_submodule(blk + ".conv1")
        shared = [t for t in tensor_quants(q) if t.owner is conv1]
        assert shared, blk
        s, z = shared[0].params()
        assert torch.equal(s, conv1.a_scale) and torch.equal(z, conv1.a_zero)
    # own ranges: each conv2 output entering an add, plus the last block's output entering the pooling
    assert len(tensor_quants(q, own_only=True)) == 4
    assert all(t.act_quant for t in tensor_quants(q, own_only=True))
    assert len(act_quantizers(q)) == len(quant_layers(q)) + 4
    # what the shortcut adds is on the uint8 grid of conv1's input: (v / s + z) integral, within [0, 255]
    seen = {}
    h = q.get_submodule("_tq0").register_forward_hook(lambda m, i, o: seen.setdefault("y", o))
    with torch.no_grad():
        q(data.x[:16])
    h.remove()
    s, z = q.get_submodule("_tq0").params()
    codes = seen["y"] / s + z
    assert torch.allclose(codes, codes.round(), atol=1e-3) and codes.min() >= 0 and codes.max() <= 255


def test_biases_are_on_the_int32_grid_of_input_times_weight_scale(tiny_resnet):
    q = df.quantize(tiny_resnet, df.load_dataset("digits:train", DIGITS_SPEC), df.QuantConfig(num_calib=64))
    for layer in quant_layers(q):
        assert layer.int_bias
        s = layer.a_scale * layer.w_scale
        k = layer.quant_bias() / s
        assert torch.allclose(k, k.round(), atol=1e-3)
        assert (layer.quant_bias() - layer.bias).abs().le(s / 2 + 1e-6).all()  # rounding, not a different bias
    qi = df.quantize(tiny_resnet, df.load_dataset("digits:train", DIGITS_SPEC), df.QuantConfig(num_calib=64, layout="inputs"))
    assert not tensor_quants(qi) and not any(layer.int_bias for layer in quant_layers(qi))


def _name_of(model, module):
    return next(n for n, m in model.named_modules() if m is module)


def _fused_ops(path):
    from datafree.compressors.quant.export import optimized_ops

    return collections.Counter(optimized_ops(path))


@pytest.mark.parametrize("name,bits", [("resnet", 8), ("mobilenet", 8), ("resnet", 4)])
def test_onnxruntime_runs_the_fused_layout_on_integer_kernels(tiny_resnet, tiny_mobilenet, tmp_path, name, bits):
    pytest.importorskip("onnxruntime")
    from datafree.compressors.quant.export import export_onnx, ort_predict, ort_session

    model = tiny_resnet if name == "resnet" else tiny_mobilenet
    data, test = df.load_dataset("digits:train", DIGITS_SPEC), df.load_dataset("digits:test", DIGITS_SPEC)
    q = df.quantize(model, data, df.QuantConfig(w_bits=bits, a_bits=bits, num_calib=64))
    path = export_onnx(q, tmp_path / "q.onnx")
    ops = _fused_ops(path)
    convs = sum(isinstance(m, nn.Conv2d) for m in model.modules())
    assert ops["QLinearConv"] == convs and ops["Conv"] == 0, ops
    assert ops["QLinearAdd"] == len(_adds(q)) and ops["Add"] == 0, ops
    assert ops["QGemm"] == 1 and ops["QLinearGlobalAveragePool"] == 1, ops
    sess = ort_session(path)
    agree = (ort_predict(sess, test) == df.predict(q, test)).float().mean().item()
    assert agree >= 0.995
    with torch.no_grad():
        sim = q(test.x[:128]).numpy()
    out = sess.run(None, {"input": test.x[:128].numpy()})[0]
    scale = max(1.0, np.abs(sim).max())
    assert np.abs(out - sim).mean() < 2e-3 * scale  # integer requantization vs float: a rare one-step flip at most


def test_exported_int32_biases_match_the_simulation(tiny_resnet, tmp_path):
    pytest.importorskip("onnxruntime")
    import onnx
    from onnx import numpy_helper

    from datafree.compressors.quant.export import export_onnx

    q = df.quantize(tiny_resnet, df.load_dataset("digits:train", DIGITS_SPEC), df.QuantConfig(num_calib=64))
    g = onnx.load(str(export_onnx(q, tmp_path / "q.onnx"))).graph
    int32 = {i.name: numpy_helper.to_array(i) for i in g.initializer if i.data_type == onnx.TensorProto.INT32
             and i.name.endswith("_int32")}
    assert len(int32) == len(quant_layers(q))
    want = sorted(tuple((layer.quant_bias() / (layer.a_scale * layer.w_scale)).round().int().tolist())
                  for layer in quant_layers(q))
    assert sorted(tuple(v.tolist()) for v in int32.values()) == want


def test_fused_artifact_round_trip_and_files_before_the_fused_layout(tmp_path):
    from datafree.compressors.artifact import load_artifact, save_artifact
    from datafree.data.base import TensorData

    torch.manual_seed(0)
    m = df.create_model("resnet20")
    data = TensorData(torch.randn(48, 3, 32, 32))
    x = torch.randn(8, 3, 32, 32)
    q = df.quantize(m, data, df.QuantConfig(num_calib=48, w_bits=4, a_bits=4))
    assert record_of(q).transforms[-1]["layout"] == "fused"
    save_artifact(q, tmp_path / "q.pt")
    back = load_artifact(tmp_path / "q.pt")
    assert len(tensor_quants(back)) == len(tensor_quants(q)) and record_of(back).input_spec == record_of(q).input_spec
    with torch.no_grad():
        assert torch.equal(back(x), q(x))
    # a file written before the fused layout existed has no `layout`: it is rebuilt as the per-input layout it was
    qi = df.quantize(m, data, df.QuantConfig(num_calib=48, layout="inputs"))
    del record_of(qi).transforms[-1]["layout"], record_of(qi).transforms[-1]["tensor_quant"]
    save_artifact(qi, tmp_path / "old.pt")
    old = load_artifact(tmp_path / "old.pt")
    assert not tensor_quants(old)
    with torch.no_grad():
        assert torch.equal(old(x), qi(x))


def test_untraceable_model_names_the_way_out():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn, self.fc = nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Linear(4, 10)

        def forward(self, x):
            y = self.bn(self.conv(x))
            if y.mean() > 0:  # data-dependent control flow: torch.fx cannot trace it
                y = y + 1
            return self.fc(y.mean((2, 3)))

    m = Branchy().eval()
    record_of(m).input_spec = DIGITS_SPEC
    data = df.load_dataset("digits:train", DIGITS_SPEC).subset(32)
    with pytest.raises(DatafreeError, match="--layout inputs"):
        df.quantize(m, data, df.QuantConfig(num_calib=32))
    q = df.quantize(m, data, df.QuantConfig(num_calib=32, layout="inputs"))
    assert len(quant_layers(q)) == 2 and isinstance(quant_layers(q)[0], QuantLayer)


def test_int8_activations_keep_the_clipped_ranges_and_run_every_conv_on_integer_kernels(tiny_mobilenet, tmp_path):
    """A W4A4 MobileNet: the b-bit activation clip is a float op in the exact file; widened to the int8 grid of the
    same clipped range, every convolution is an integer kernel and the file matches the widened simulation."""
    pytest.importorskip("onnxruntime")
    from datafree.compressors.quant.export import export_onnx, ort_predict, ort_session
    from datafree.compressors.quant.graph import int8_activations_

    data, test = df.load_dataset("digits:train", DIGITS_SPEC), df.load_dataset("digits:test", DIGITS_SPEC)
    q = df.quantize(tiny_mobilenet, data, df.QuantConfig(w_bits=4, a_bits=4, num_calib=64))
    before = {id(m): (m.a_bits, float(m.a_scale), float(m.a_zero)) for m in act_quantizers(q) if m.act_quant}
    w_before = [layer.quant_weight().detach().clone() for layer in quant_layers(q)]
    import copy

    wide = copy.deepcopy(q)
    n = int8_activations_(wide)
    assert n == sum(b < 8 for b, _, _ in before.values()) > 0
    shared = 0
    for m, m0 in zip(act_quantizers(wide), act_quantizers(q)):
        if not m0.act_quant:
            continue
        b, s, z = before[id(m0)]
        assert m.a_bits == 8
        s8, z8 = float(m.a_scale), float(m.a_zero)
        if isinstance(m, QuantLayer) and m.input_shared and not m0.input_shared:
            # reads a tensor with its own 8-bit grid (the shortcut rule): takes exactly that grid, no requantization
            node = next(nd for nd in wide.graph.nodes if nd.op == "call_module" and nd.target == _name_of(wide, m))
            tq = dict(wide.named_modules())[node.args[0].target]
            assert tq.owner is None and (s8, z8) == (float(tq.a_scale), float(tq.a_zero))
            shared += 1
            continue
        # the same clipped range [(0 - z)·s, (2^b - 1 - z)·s], now in 255 steps
        assert (0 - z8) * s8 == pytest.approx((0 - z) * s, abs=1e-6)
        assert (255 - z8) * s8 == pytest.approx((2 ** b - 1 - z) * s, rel=1e-5)
    for layer, w0 in zip(quant_layers(wide), w_before):
        assert torch.equal(layer.quant_weight(), w0)  # weights stay on their b-bit grid
        k = w0 / layer.w_scale.view(-1, *[1] * (w0.dim() - 1))
        if layer.w_bits == 4:
            assert torch.allclose(k, k.round(), atol=1e-4) and k.round().min() >= -8 and k.round().max() <= 7
    assert shared > 0  # the expanded blocks' inputs feed a shortcut too
    assert int8_activations_(wide) == 0  # idempotent
    path = export_onnx(wide, tmp_path / "wide.onnx")
    ops = _fused_ops(path)
    w8 = df.quantize(tiny_mobilenet, data, df.QuantConfig(w_bits=8, a_bits=8, num_calib=64))
    assert ops == _fused_ops(export_onnx(w8, tmp_path / "w8.onnx"))  # node for node the W8A8 file's integer graph
    convs = sum(isinstance(m, nn.Conv2d) for m in tiny_mobilenet.modules())
    assert ops["QLinearConv"] == convs and ops["Conv"] == 0 and ops["FusedConv"] == 0, ops
    agree = (ort_predict(ort_session(path), test) == df.predict(wide, test)).float().mean().item()
    assert agree >= 0.995


def test_cli_export_int8_activations(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    import json

    from datafree.cli import main

    torch.manual_seed(0)
    w = tmp_path / "m.pt"
    torch.save(_trained(df.create_model("small_cnn")).state_dict(), w)
    q = tmp_path / "q4.pt"
    assert main(["quantize", "small_cnn", "--weights", str(w), "--calib", "digits:train", "--w-bits", "4",
                 "--a-bits", "4", "--out", str(q), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["export", str(q), "--out", str(tmp_path / "x.onnx")]) == 0
    assert "--int8-activations" in capsys.readouterr().out  # the exact file says where int8 speed is
    assert main(["export", str(q), "--out", str(tmp_path / "q.onnx"), "--int8-activations", "--check", "digits:test",
                 "--reps", "2", "--latency-batch", "8", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["int8_activations"] >= 1 and r["prediction_agreement"] >= 99.5
    assert 0 < r["top1_sim_original"] <= 100
    assert main(["export", "small_cnn", "--weights", str(w), "--int8-activations", "--out", str(tmp_path / "f.onnx")]) == 2
    assert "quantized file" in capsys.readouterr().err


def test_sub8_readers_keep_an_8bit_shortcut_and_old_files_rebuild_the_shared_grid(tmp_path, monkeypatch):
    """W4A4: a block input read by a 4-bit conv and by the shortcut is quantized on its own 8-bit range (the conv
    requantizes to its 4-bit grid); a file made before that rule is rebuilt with the grid its state was made for."""
    import functools

    import datafree.compressors.quant.ptq as ptq
    from datafree.compressors.artifact import load_artifact, save_artifact
    from datafree.compressors.quant.graph import apply_layout
    from datafree.data.base import TensorData

    torch.manual_seed(0)
    m = df.create_model("resnet20")
    data = TensorData(torch.randn(64, 3, 32, 32))
    x = torch.randn(8, 3, 32, 32)
    q = df.quantize(m, data, df.QuantConfig(w_bits=4, a_bits=4, num_calib=64, quantize_first_last=True))
    for blk in ("layer1.0", "layer2.0", "layer3.0"):
        conv1 = q.get_submodule(blk + ".conv1")
        assert not conv1.input_shared and not [t for t in tensor_quants(q) if t.owner is conv1], blk
    mods = dict(q.named_modules())
    for a in _adds(q):  # both operands of every add sit on 8-bit grids
        for v in a.args[:2]:
            t = mods[v.target]
            src = t.owner if t.owner is not None else t
            assert src.a_bits == 8, a
    assert record_of(q).transforms[-1]["sub8_own_range"] is True
    save_artifact(q, tmp_path / "new.pt")
    with torch.no_grad():
        assert torch.equal(load_artifact(tmp_path / "new.pt")(x), q(x))
    # the old rule: sub-8-bit conv1 owns the block input's grid; its file (no sub8_own_range key) loads as it was made
    monkeypatch.setattr(ptq, "apply_layout", functools.partial(apply_layout, sub8_own_range=False))
    old = df.quantize(m, data, df.QuantConfig(w_bits=4, a_bits=4, num_calib=64, quantize_first_last=True))
    monkeypatch.undo()
    assert old.get_submodule("layer1.0.conv1").input_shared
    record_of(old).transforms[-1].pop("sub8_own_range")
    save_artifact(old, tmp_path / "old.pt")
    back = load_artifact(tmp_path / "old.pt")
    assert len(tensor_quants(back)) == len(tensor_quants(old)) < len(tensor_quants(q)) + 3
    with torch.no_grad():
        assert torch.equal(back(x), old(x))
