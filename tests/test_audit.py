"""Privacy audit: nearest neighbours and AUROC against direct computations; a leaking set is flagged, noise is not."""
import json

import pytest
import torch

import datafree as df
from datafree.cli import main
from datafree.core.errors import DatafreeError
from datafree.core.utils import frozen_eval
from datafree.data.base import TensorData
from datafree.evaluation.audit import audit, auroc, nearest
from datafree.models.record import record_of


def test_nearest_and_auroc_against_direct_computations():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(7, 5, generator=g), torch.randn(11, 5, generator=g)
    d, i = nearest(a, b, chunk=3)
    full = torch.cdist(a, b)
    assert torch.allclose(d, full.min(1).values, atol=1e-5) and torch.equal(i, full.argmin(1))
    d2, i2 = nearest(b, b, exclude_self=True)
    f2 = torch.cdist(b, b) + torch.diag(torch.full((11,), float("inf")))
    assert torch.allclose(d2, f2.min(1).values, atol=1e-4) and torch.equal(i2, f2.argmin(1))
    pos, neg = torch.tensor([0.9, 0.5, 0.5, 0.2]), torch.tensor([0.5, 0.1, 0.3])
    direct = sum((1.0 if p > n else 0.5 if p == n else 0.0) for p in pos for n in neg) / (len(pos) * len(neg))
    assert abs(auroc(pos, neg) - direct) < 1e-12
    assert auroc(torch.ones(3), torch.zeros(3)) == 1.0 and auroc(torch.zeros(3), torch.zeros(3)) == 0.5


def test_leak_null_is_the_share_under_random_equal_splits():
    from datafree.evaluation.audit import leak_null

    m = 5
    null = leak_null(torch.tensor([0, 0, 0, 0]), m, permutations=4000)  # one hub: all-or-nothing shares
    assert set(null.unique().tolist()) <= {0.0, 1.0} and abs(null.mean().item() - 0.5) < 0.03
    spread = leak_null(torch.arange(2 * m), m, permutations=4000)  # each image once: exactly half, every split
    assert torch.all(spread == 0.5)


def test_audit_flags_copies_of_training_images_and_not_noise(digits_teacher, tmp_path):
    m, _ = digits_teacher
    train = df.load_dataset("digits:train", record_of(m).input_spec).subset(200)  # equal sizes: the leak test uses all of both
    held = df.load_dataset("digits:test", record_of(m).input_spec).subset(200)
    g = torch.Generator().manual_seed(0)
    copies = TensorData(train.x[:50] + 0.01 * torch.randn(train.x[:50].shape, generator=g), train.y[:50])
    noise = TensorData(torch.randn(50, *train.x.shape[1:], generator=g), torch.zeros(50, dtype=torch.long))
    leak = audit(m, copies, train, held, pairs_png=str(tmp_path / "pairs.png"))
    clean = audit(m, noise, train, held)
    assert leak["pixel"]["median_ratio"] < 0.2 and leak["pixel"]["nearer_train_than_held_out"] > 0.9
    assert leak["pixel"]["nearer_train_p_value"] < 0.01 and leak["pixel"]["nearer_train_null_p95"] < 0.9
    # noise: whatever its raw share, random re-splits of the same real images give shares as extreme
    assert clean["pixel"]["nearer_train_p_value"] > 0.05
    assert leak["pixel"]["closer_than_any_held_out"] > 0.9
    assert clean["pixel"]["median_ratio"] > 1.0 and clean["pixel"]["closer_than_any_held_out"] == 0.0
    assert (tmp_path / "pairs.png").stat().st_size > 0 and len(leak["closest_pairs"]) == 16
    assert 0.0 <= leak["membership_auroc"] <= 1.0


def test_cli_audit(digits_teacher, tmp_path, capsys):
    m, w = digits_teacher
    syn = tmp_path / "g"
    df.synthesize(m, "gaussian", df.make_config("gaussian", num=32), out=str(syn), progress=False)
    out = tmp_path / "audit"
    assert main(["audit", str(syn), "--model", "small_cnn", "--weights", w, "--real", "digits:train", "--held-out",
                 "digits:test", "--out", str(out), "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["method"] == "gaussian" and r["n_synthetic"] == 32
    assert json.loads((out / "audit.json").read_text())["pixel"] == r["pixel"]
    assert (out / "closest_pairs.png").is_file()
    # the teacher named in the set's manifest is found by itself
    assert main(["audit", str(syn), "--real", "digits:train", "--held-out", "digits:test"]) == 0
    assert "membership AUROC" in capsys.readouterr().out


def test_similarity_per_batch_is_the_score_of_each_batch_and_detects_noise(digits_teacher):
    from datafree.evaluation.metrics import similarity, similarity_per_batch

    m, _ = digits_teacher
    test = df.load_dataset("digits:test", record_of(m).input_spec)
    whole = similarity_per_batch(m, test, len(test))
    assert len(whole) == 1 and abs(whole[0] - similarity(m, test, batch_size=len(test))["score"]) < 1e-4 * max(1, whole[0])
    ind = similarity_per_batch(m, test, 32)
    assert len(ind) == len(test) // 32
    noise = TensorData(torch.randn(320, *test.x.shape[1:], generator=torch.Generator().manual_seed(0)))
    ood = similarity_per_batch(m, noise, 32)
    assert auroc(torch.tensor(ood), torch.tensor(ind)) > 0.95


def test_similarity_bn_plus_onehot_adds_the_mean_neg_log_max_softmax(digits_teacher):
    from datafree.evaluation.metrics import similarity_per_batch

    m, _ = digits_teacher
    test = df.load_dataset("digits:test", record_of(m).input_spec)
    bn = similarity_per_batch(m, test, len(test), score="bn")[0]
    both = similarity_per_batch(m, test, len(test), score="bn+oh")[0]
    with torch.no_grad(), frozen_eval(m):
        p = torch.softmax(m(test.x), 1)
    oh = -p.max(1).values.log().mean().item()  # direct: mean over samples of −log max_k p_k
    assert oh > 1e-4 and abs((both - bn) - oh) < 1e-4
    with pytest.raises(DatafreeError, match="unknown score"):
        similarity_per_batch(m, test, 32, score="energy")
