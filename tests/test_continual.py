import json

import pytest
import torch

import datafree as df
from datafree.cli import main
from datafree.compressors.continual import ContinualConfig, expand_head, extend_classes, split_accuracy
from datafree.data.train import train_classifier_
from datafree.kd.loop import KDConfig
from datafree.models.record import record_of
from datafree.synth import make_config, synthesize
from tests.conftest import measured


@pytest.fixture(scope="module")
def old_digits(tmp_path_factory):
    m = df.create_model("small_cnn", num_classes=5)
    train = df.load_dataset("digits:train", record_of(m).input_spec).only_classes(range(5))
    train_classifier_(m, train, epochs=12, seed=0)
    p = tmp_path_factory.mktemp("old") / "old5.pt"
    torch.save(m.state_dict(), p)
    return m, str(p)


def test_only_classes_and_expand_head_keep_old_logits(old_digits):
    old, _ = old_digits
    d = df.load_dataset("digits:test", record_of(old).input_spec)
    sub = d.only_classes([5, 7])
    assert set(sub.y.tolist()) == {5, 7} and len(sub) == int(((d.y == 5) | (d.y == 7)).sum())
    big = expand_head(old, 10)
    x = d.x[:8]
    with torch.no_grad():
        assert torch.allclose(big(x)[:, :5], old(x), atol=1e-6)
    assert big.fc.out_features == 10 and record_of(big).input_spec.num_classes == 10 and old.fc.out_features == 5


def test_inverted_old_classes_beat_forgetting(old_digits):
    old, _ = old_digits
    spec = record_of(old).input_spec
    new = df.load_dataset("digits:train", spec).only_classes(range(5, 10))
    test = df.load_dataset("digits:test", spec)
    inv = synthesize(old, "deepinversion", make_config("deepinversion", num=200, batch_size=100, iterations=100,
                                                       bn_weight=1.0), progress=False)
    kd = KDConfig(steps=250, batch_size=64, lr=2e-3, freeze_bn=False, flip=False)
    acc = {}
    for method in ("finetune-new", "lwf", "deepinversion"):
        m = extend_classes(old, new, 10, ContinualConfig(method=method), kd=kd, synthetic=inv, progress=False)
        acc[method] = split_accuracy(m, test, 5)
    # measured in test_bounds.json, 20 runs: finetune-new old 0.0 / new 98.3..100; deepinversion's margins 63.7..84.1 and 30.3..40.3 pt
    assert measured("continual.finetune_old", acc["finetune-new"]["top1_old"]) < 20.0  # catastrophic forgetting
    assert measured("continual.finetune_new", acc["finetune-new"]["top1_new"]) > 90.0
    assert measured("continual.di_old_minus_finetune_old",
                    acc["deepinversion"]["top1_old"] - acc["finetune-new"]["top1_old"]) > 40.0, acc
    assert measured("continual.di_all_minus_best_other", acc["deepinversion"]["top1_all"]
                    - max(acc["finetune-new"]["top1_all"], acc["lwf"]["top1_all"])) > 0, acc


def test_cli_extend(old_digits, tmp_path, capsys):
    _, w = old_digits
    out = str(tmp_path / "ext.pt")
    base = ["extend", "small_cnn", "--weights", w, "--num-classes", "5", "--new-data", "digits:train",
            "--new-classes", "5-9", "--steps", "40", "--no-flip", "--out", out, "--eval", "digits:test", "--json",
            "--no-progress"]
    assert main(base + ["--method", "lwf"]) == 0
    info = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert info["num_classes"] == 10 and all(0 <= info[k] <= 100 for k in ("top1_old", "top1_new", "top1_all"))
    assert main(["evaluate", "small_cnn", "--num-classes", "10", "--weights", out, "--data", "digits:test", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["top1"] == pytest.approx(info["top1_all"])
    assert main(base[:9] + ["3-9"] + base[10:]) == 2
    assert "start at 5" in capsys.readouterr().err
