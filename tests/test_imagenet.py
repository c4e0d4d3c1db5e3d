"""ImageNet-scale inputs, first class: the shared ImageNet sets as dataset specs and EfficientNet-Lite0 in the zoo."""
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import datafree as df
from datafree.cli import main
from datafree.data.real import class_names, load_labelled_folder
from datafree.models import InputSpec
from tests.conftest import shared_or_skip


def test_a_labelled_folder_is_resized_once_to_the_model_input(tmp_path):
    (tmp_path / "imgs").mkdir()
    rng = np.random.RandomState(0)
    rows = []
    for i, size in enumerate([(227, 227), (256, 256), (300, 200)]):
        Image.fromarray(rng.randint(0, 255, (*size[::-1], 3), dtype=np.uint8)).save(tmp_path / "imgs" / f"{i}.jpg")
        rows.append(f"{i}.jpg,{i * 7}")
    (tmp_path / "labels.csv").write_text("file,label\n" + "\n".join(rows) + "\n")
    spec = InputSpec((3, 64, 64), (0.5,) * 3, (0.5,) * 3, 1000)
    x, y = load_labelled_folder(tmp_path / "imgs", tmp_path / "labels.csv", spec)
    assert x.shape == (3, 64, 64, 3) and x.dtype == np.uint8 and y.tolist() == [0, 7, 14]
    with Image.open(tmp_path / "imgs" / "2.jpg") as im:  # one bilinear resize of the RGB image, nothing else
        assert np.array_equal(x[2], np.asarray(im.convert("RGB").resize((64, 64), Image.BILINEAR)))
    (tmp_path / "bad.csv").write_text("name,class\n0.jpg,1\n")
    with pytest.raises(df.DatafreeError, match="columns file,label"):
        load_labelled_folder(tmp_path / "imgs", tmp_path / "bad.csv", spec)


def test_efficientnet_lite0_is_in_the_zoo_with_its_own_spec_and_weights():
    pytest.importorskip("efficientnet_lite_pytorch")
    m = df.load_model("efficientnet_lite0")
    spec = df.record_of(m).input_spec
    assert spec.shape == (3, 224, 224) and spec.num_classes == 1000 and abs(spec.mean[0] - 127 / 255) < 1e-9
    assert df.models.head_of(m) == "_fc" and 4.6e6 < sum(p.numel() for p in m.parameters()) < 4.7e6
    w = m._fc.weight
    assert float(w.std()) > 0.01  # Google's weights, not an initialization (those are reset by the package)
    with pytest.raises(df.DatafreeError, match="1000 ImageNet classes"):
        df.load_model("efficientnet_lite0", num_classes=10)


def test_without_the_extra_the_zoo_entry_says_which_to_install(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "efficientnet_lite_pytorch", None)  # import fails as if not installed
    assert main(["evaluate", "efficientnet_lite0", "--data", "digits:test"]) == 2
    err = capsys.readouterr().err.strip()
    assert "pip install 'datafree[imagenet]'" in err and len(err.splitlines()) == 1


@pytest.mark.slow
def test_imagenet_specs_and_the_real_model_on_them():
    shared_or_skip("imagenet/val1300_labels.csv")
    pytest.importorskip("efficientnet_lite_pytorch")
    m = df.load_model("efficientnet_lite0")
    spec = df.record_of(m).input_spec
    val = df.load_dataset("imagenet:val1300", spec)
    sample = df.load_dataset("imagenet:sample1000", spec)
    assert len(val) == 1300 and len(sample) == 1000 and len(set(val.y.tolist())) == 725
    assert sorted(sample.y.tolist()) == list(range(1000))
    assert class_names("imagenet:val1300")[0] == "tench"
    top1 = df.evaluate(m, val.subset(200, 0))["top1"]
    assert top1 > 70, top1  # 81.5 on all 1300 (README of the shared data); 200 images: a loose floor
    with torch.no_grad():
        assert torch.equal(m(val.x[:4]), m(val.x[:4]))


def test_evaluate_folds_bn_for_large_images_and_gives_the_same_numbers():
    """At ImageNet-like sizes evaluate runs a copy with BN folded into the convs: same logits, same predictions."""
    from datafree.evaluation.metrics import _inference_copy

    torch.manual_seed(0)
    m = df.create_model("small_cnn_cifar")
    df.record_of(m).input_spec = InputSpec((3, 64, 64), (0.5,) * 3, (0.5,) * 3, 10)
    for mod in m.modules():  # non-trivial BN statistics, as after training
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.5, 0.5), mod.running_var.uniform_(0.5, 2.0), mod.weight.data.uniform_(0.5, 1.5)
    m.eval()
    data = df.TensorData(torch.randn(40, 3, 64, 64), torch.randint(0, 10, (40,)))
    fused = _inference_copy(m, data)
    assert fused is not m and not any(isinstance(x, torch.nn.BatchNorm2d) for x in fused.modules())
    assert any(isinstance(x, torch.nn.BatchNorm2d) for x in m.modules())  # the model itself is untouched
    with torch.no_grad():
        assert torch.allclose(fused(data.x), m(data.x), atol=1e-4)
    assert df.evaluate(m, data)["top1"] == round(100 * (m(data.x).argmax(1) == data.y).float().mean().item(), 3)
    small = df.TensorData(torch.randn(4, 3, 32, 32))
    assert _inference_copy(m, small) is m  # small images: no copy


def test_the_allocator_threshold_is_raised_on_glibc_and_can_be_turned_off():
    import subprocess

    code = ("import ctypes, datafree as df; print(df.tune_allocator(), df.tune_allocator())")
    on = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    env = {**__import__("os").environ, "DATAFREE_MALLOC_TUNE": "0"}
    off = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env).stdout.split()
    assert off == ["False", "False"]
    if sys.platform.startswith("linux") and "glibc" in " ".join(__import__("platform").libc_ver()):
        assert on == ["True", "True"]  # set once, and the second call reports the first


def test_on_the_fly_synthesis_of_large_images_uses_a_cpu_budget_and_says_so(capsys):
    from datafree.kd.sources import on_the_fly_config

    big = InputSpec((3, 224, 224), (0.0,) * 3, (1.0,) * 3, 1000)
    c = on_the_fly_config("bn-stats", big, None, 0)
    assert (c.num, c.iterations, c.low_res) == (64, 100, 0.75)
    assert "64 samples x 100 iterations" in capsys.readouterr().err
    assert on_the_fly_config("bn-stats", big, 16, 0).num == 16  # a smaller request is kept
    assert on_the_fly_config("gaussian", big, None, 0).num == 512  # no iterations: nothing to budget
    capsys.readouterr()
    small = on_the_fly_config("bn-stats", InputSpec((3, 32, 32), (0.0,) * 3, (1.0,) * 3, 10), None, 0)
    assert (small.num, small.iterations, small.low_res) == (512, df.make_config("bn-stats").iterations, 0.0)
    assert capsys.readouterr().err == ""
