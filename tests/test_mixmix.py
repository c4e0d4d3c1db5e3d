"""MixMix: a teacher pool as one model (feature mixing) and CutMix with area-weighted soft labels (data mixing)."""
import json

import torch

import datafree as df
from datafree.cli import main
from datafree.models.bn_hooks import bn_layers
from datafree.models.ensemble import Ensemble, parse_teacher_ref
from datafree.models.record import record_of
from datafree.synth.bn_stats import cutmix


def test_cutmix_pastes_a_box_and_weights_labels_by_area():
    g = torch.Generator().manual_seed(1)
    torch.manual_seed(0)
    x = torch.arange(4 * 1 * 8 * 8, dtype=torch.float32).view(4, 1, 8, 8)
    y = torch.tensor([0, 1, 2, 3])
    mixed, soft, keep = cutmix(x, y, 5, g)
    changed = (mixed != x).any(1)  # (n, h, w): where a pasted pixel differs (all values distinct: pasted = changed)
    assert torch.allclose(soft.sum(1), torch.ones(4))
    moved = [i for i in range(4) if changed[i].any()]
    assert moved and keep < 1.0
    for i in moved:
        assert abs(changed[i].float().mean().item() - (1 - keep)) < 1e-6
        assert abs(soft[i, y[i]].item() - keep) < 1e-6  # area-weighted: own label keeps the unpasted share
        donors = [j for j in range(4) if torch.equal(mixed[i][:, changed[i]], x[j][:, changed[i]])]
        assert len(donors) == 1 and donors[0] != i and abs(soft[i, y[donors[0]]].item() - (1 - keep)) < 1e-6


def test_ensemble_averages_logits_and_exposes_every_bn(digits_teacher):
    m, _ = digits_teacher
    other = df.create_model("small_cnn")
    e = Ensemble([m, other])
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        assert torch.allclose(e.eval()(x), (m(x) + other.eval()(x)) / 2, atol=1e-6)
    assert len(bn_layers(e)) == len(bn_layers(m)) + len(bn_layers(other))
    assert df.fingerprint(e) != df.fingerprint(m)
    assert parse_teacher_ref("resnet32:w/r32.th") == ("resnet32", "w/r32.th")
    assert parse_teacher_ref("my/net.py:make:w.pt") == ("my/net.py:make", "w.pt")


def test_cli_mixmix_from_a_pool_serves_a_single_model(digits_teacher, tmp_path, capsys):
    m, w = digits_teacher
    w2 = tmp_path / "second.pt"
    torch.manual_seed(5)
    from datafree.data.train import train_classifier_

    m2 = df.create_model("small_cnn")
    train_classifier_(m2, df.load_dataset("digits:train", record_of(m2).input_spec), epochs=2, seed=1)
    torch.save(m2.state_dict(), w2)
    out = tmp_path / "mm"
    assert main(["synthesize", "small_cnn", "--weights", w, "--teachers", f"small_cnn:{w2}", "--method", "mixmix",
                 "--num", "16", "--iterations", "20", "--out", str(out), "--json", "--no-progress"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["num"] == 16
    man = json.loads((out / "manifest.json").read_text())
    assert man["teacher"]["model"] == "ensemble" and len(man["teacher"]["members"]) == 2
    assert main(["quantize", "small_cnn", "--weights", w, "--calib", str(out), "--out", str(tmp_path / "q.pt"),
                 "--no-progress"]) == 0
    assert main(["synthesize", "small_cnn", "--weights", w, "--teachers", "small_cnn", "--method", "mixmix", "--num",
                 "4", "--out", str(tmp_path / "x")]) == 2
    assert "NAME:WEIGHTS" in capsys.readouterr().err
