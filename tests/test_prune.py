import json

import pytest
import torch
import torch.nn as nn

import datafree as df
from datafree.cli import main
from datafree.compressors.prune import (
    count_flops_params,
    finalize_unstructured_,
    prunable_chains,
    prune_structured_,
    prune_unstructured_,
    pruned_state_dict,
)
from datafree.kd.loop import KDConfig, distill_
from datafree.models.record import record_of
from datafree.models.spec import DIGITS_SPEC
from tests.conftest import measured


def test_flops_and_params_by_hand():
    m = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.Flatten(), nn.Linear(128, 10))
    record_of(m).input_spec = DIGITS_SPEC
    r = count_flops_params(m)
    assert r["flops"] == 2 * 64 * 9 + 128 * 10
    assert r["params"] == 2 * 9 + 2 + 1280 + 10


def _resnet20():
    torch.manual_seed(0)
    m = df.create_model("resnet20")
    with torch.no_grad():  # non-trivial BN statistics
        for bn in m.modules():
            if isinstance(bn, nn.BatchNorm2d):
                bn.running_mean.uniform_(-0.2, 0.2), bn.running_var.uniform_(0.5, 2.0)
                bn.weight.uniform_(0.5, 1.5), bn.bias.uniform_(-0.1, 0.1)
    return m.eval()


def test_structured_pruning_removes_exactly_the_dead_channels():
    m = _resnet20()
    chains = prunable_chains(m)
    assert [c.conv for c in chains] == [f"layer{i}.{j}.conv1" for i in (1, 2, 3) for j in range(3)]
    with torch.no_grad():  # half of each block's inner channels output relu(-1) = 0: removing them changes nothing
        for c in chains:
            bn = dict(m.named_modules())[c.bn]
            n = bn.num_features
            bn.weight[: n // 2] = 0.0
            bn.bias[: n // 2] = -1.0
    x = torch.randn(4, 3, 32, 32)
    ref = m(x)
    before = count_flops_params(m)
    cut = prune_structured_(m, 0.5)
    assert all(c["kept"] == c["channels"] // 2 for c in cut)
    assert m.layer3[0].conv1.weight.shape == (32, 32, 3, 3) and m.layer3[0].conv2.weight.shape == (64, 32, 3, 3)
    assert torch.allclose(m(x), ref, atol=1e-4)
    after = count_flops_params(m)
    assert 0.40 < 1 - after["flops"] / before["flops"] < 0.5  # inner convs are ~all of the FLOPs minus stem/shortcuts


def test_pruned_state_dict_loads_into_a_fresh_zoo_model(tmp_path):
    m = _resnet20()
    prune_structured_(m, 0.5)
    torch.save(pruned_state_dict(m), tmp_path / "p.pt")
    m2 = df.load_model("resnet20", str(tmp_path / "p.pt"))
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(m(x), m2(x), atol=1e-5)
    with pytest.raises(df.DatafreeError, match="do not fit"):
        df.load_model("resnet32", str(tmp_path / "p.pt"))


def test_unstructured_pruning_keeps_zeros_through_finetuning(digits_teacher):
    teacher, _ = digits_teacher
    import copy

    m = copy.deepcopy(teacher)
    prune_unstructured_(m, 0.6)
    ws = [mod.weight for mod in m.modules() if isinstance(mod, (nn.Conv2d, nn.Linear))]
    total = sum(w.numel() for w in ws)
    zeros = sum(int((w == 0).sum()) for w in ws)
    assert abs(zeros - round(0.6 * total)) <= 1
    real = df.load_dataset("digits:train", record_of(teacher).input_spec)
    distill_(m, teacher, real, KDConfig(steps=20, batch_size=32, lr=1e-3), progress=False)
    finalize_unstructured_(m)
    ws = [mod.weight for mod in m.modules() if isinstance(mod, (nn.Conv2d, nn.Linear))]
    assert sum(int((w == 0).sum()) for w in ws) >= zeros and not any(hasattr(mod, "weight_orig") for mod in m.modules())


def test_cli_prune_structured_with_finetuning(digits_teacher, tmp_path, capsys):
    _, w = digits_teacher
    out = str(tmp_path / "pruned.pt")
    assert main(["prune", "small_cnn", "--weights", w, "--sparsity", "0.5", "--structured", "--data", "digits:train",
                 "--finetune-steps", "150", "--out", out, "--eval", "digits:test", "--json", "--no-progress"]) == 0
    info = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert info["flops_after"] < 0.6 * info["flops_before"] and info["params_after"] < info["params_before"]
    # KD on real digits recovers most of the accuracy (measured in test_bounds.json, 20 runs: drop -0.28..2.5 pt)
    assert measured("prune.drop", info["teacher_top1"] - info["top1"]) < 5.0
    assert main(["evaluate", "small_cnn", "--weights", out, "--data", "digits:test", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["top1"] == pytest.approx(info["top1"])
    assert main(["prune", "small_cnn", "--weights", w, "--sparsity", "1.5", "--structured", "--out", out]) == 2
    assert "sparsity" in capsys.readouterr().err
