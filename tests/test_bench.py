import argparse

import pytest

from benchmarks.common import cached_set_dir, command_line


def test_command_line_reproduces_the_given_options_only():
    a = argparse.Namespace(methods=["a", "b"], budget=900.0, bn_weight=None, bf16=True, flip=False, out="x.json")
    assert command_line("benchmarks.x", a) == "python -m benchmarks.x --methods a b --budget 900.0 --bf16"


def test_command_line_with_its_parser_parses_back_to_the_same_options():
    """A switch turned off (`--no-x`) and an emptied list (bare `--x`) differ from the defaults: they must be written."""
    p = argparse.ArgumentParser()
    p.add_argument("--held-models", nargs="*", default=["resnet56"])
    p.add_argument("--jpeg-held", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--fast", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="x.json")
    for argv in (["--held-models", "--no-jpeg-held", "--seed", "3"], ["--held-models", "a", "b", "--fast"], []):
        a = p.parse_args(argv)
        cmd = command_line("benchmarks.x", a, parser=p)
        assert p.parse_args(cmd.split()[3:]) == a, cmd
    assert command_line("benchmarks.x", p.parse_args(["--held-models", "--no-jpeg-held"]), parser=p) == \
        "python -m benchmarks.x --held-models --no-jpeg-held --seed 0"


def test_cached_set_dir_names_non_default_overrides():
    assert cached_set_dir("r56", "deepinversion", 256, 400, 1, "c").as_posix() == "c/r56_deepinversion_n256_it400_s1"
    d = cached_set_dir("r56", "deepinversion", 64, 200, 0, "c", bn_weight=10.0, bf16=True, lr=None)
    assert d.name == "r56_deepinversion_n64_it200_s0_bf16_bn_weight10.0"


def test_teacher_view_against_hand_counts():
    import math

    import torch

    from datafree.data import TensorData
    from datafree.evaluation.metrics import teacher_view

    logits = torch.tensor([[5.0, 0, 0], [0, 5.0, 0], [0, 5.0, 0], [0, 0, 0]])  # argmax 0, 1, 1, 0 (ties -> first)
    d = TensorData(torch.zeros(4, 1, 2, 2), torch.tensor([0, 1, 2, 0]), logits)
    v = teacher_view(d)
    assert v["target_agreement"] == 75.0
    p_max = math.exp(5) / (math.exp(5) + 2)
    assert v["mean_max_prob"] == round((3 * p_max + 1 / 3) / 4, 4)
    freq = [0.5, 0.5]  # classes 0 and 1 predicted twice each, class 2 never
    assert v["class_balance"] == round(-sum(f * math.log(f) for f in freq) / math.log(3), 4)
    assert teacher_view(d, class_conditional=False)["target_agreement"] is None


def test_row_label_and_default_bn_weight():
    from benchmarks.common import di_bn_weight, row_label
    from datafree.synth import make_config

    assert row_label({"method": "deepinversion", "bn_weight": 10.0}) == "deepinversion (α_f 10)"
    assert row_label({"method": "bn-stats"}) == "bn-stats"
    assert di_bn_weight(0.0) == 0.0 and di_bn_weight(None) == make_config("deepinversion").bn_weight == 1.0


def test_rowstore_keeps_rows_when_only_selection_keys_change(tmp_path):
    from benchmarks.common import RowStore

    f = tmp_path / "r.json"
    a = RowStore(f, {"config": {"steps": 1500, "lr": 1e-3}}, selection=("steps",))
    a.run({"method": "x", "steps": 1500}, lambda: {"top1": 1.0})
    b = RowStore(f, {"config": {"steps": 4000, "lr": 1e-3}}, selection=("steps",))  # another step count: rows stay
    assert b.get({"method": "x", "steps": 1500}) == {"method": "x", "steps": 1500, "top1": 1.0, "seconds": b.rows[0]["seconds"]}
    calls = []
    b.run({"method": "x", "steps": 4000}, lambda: calls.append(1) or {"top1": 2.0})
    b.run({"method": "x", "steps": 1500}, lambda: calls.append(1) or {"top1": 9.0})  # stored: not recomputed
    assert calls == [1] and [r["top1"] for r in b.rows] == [1.0, 2.0]
    before = f.read_text()
    with pytest.raises(SystemExit, match="differs in: lr"):  # protocol changed: refused, finished rows never dropped
        RowStore(f, {"config": {"steps": 4000, "lr": 5e-4}}, selection=("steps",))
    assert f.read_text() == before
    # an option added later, left at its None default, is the same protocol: rows and the old meta come back
    c = RowStore(f, {"config": {"steps": 4000, "lr": 1e-3, "new": None}}, selection=("steps",))
    assert len(c.rows) == 2 and c.old_meta["config"] == {"steps": 4000, "lr": 1e-3}
    with pytest.raises(SystemExit, match="differs in: new"):  # ... but set, it is another protocol
        RowStore(f, {"config": {"steps": 4000, "lr": 1e-3, "new": 1}}, selection=("steps",))


def test_imagenet_benchmarks_parse_and_count_weight_bytes(capsys):
    import pytest
    import torch.nn as nn

    from benchmarks import imagenet, imagenet_cli, imagenet_speed

    for mod in (imagenet, imagenet_cli, imagenet_speed):
        with pytest.raises(SystemExit) as e:
            mod.main(["--help"])
        assert e.value.code == 0
    m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Conv2d(4, 8, 1), nn.Flatten(), nn.Linear(8, 10))
    # first (108 weights) and last (80) at 8 bits, the middle (32) at 4: (108 + 80) + 32 / 2 bytes
    assert imagenet._uniform_bytes(m, 4) == 108 + 80 + 16
    assert set(imagenet.STAGES) >= {"calibrate", "bias-correct", "brecq", "brecq-alone", "mixed"}


def test_estimate_benchmarks_parse_fit_and_judge():
    import math

    import pytest

    from benchmarks import autopilot, estimate

    for mod in (estimate, autopilot):
        with pytest.raises(SystemExit) as e:
            mod.main(["--help"])
        assert e.value.code == 0
    # rows on the curve log(drop + 1) = 0.5 log(rel) + 2 (two models): the fit finds it, cross-validation errs ~0
    rows = [{"model": m, "features": {"rel": r}, "drop": math.exp(0.5 * math.log(r) + 2) - 1, "agreement": 96.0,
             "n_test": 1000} for m in ("a", "b") for r in (0.2, 0.4, 0.8, 1.5, 3.0)]
    c = estimate.fit(rows, "rel", 1)
    assert c[0] == pytest.approx(0.5, abs=1e-6) and c[1] == pytest.approx(2.0, abs=1e-6)
    mae, res = estimate.cross_validate(rows, "rel", 1)
    assert mae < 0.02 and max(abs(v) for v in res) < 1e-2
    for r, (lo, hi) in zip(rows, [(0, 99)] * 5 + [(0, 0.1)] * 5):
        r["estimate"] = {"drop": r["drop"], "lo": lo, "hi": hi}
    j = estimate.judge(rows)
    assert j["spearman"] == pytest.approx(1.0) and j["mae_drop_le_10"] == pytest.approx(0, abs=1e-9)
    assert j["inside_interval"] == 50.0 and j["rows"] == 10
    # the perfect estimator's scores: paired standard error 100·sqrt(d/n) = 0.632 pt (d = 4 %, n = 1000) gives a mean
    # absolute error of se·sqrt(2/π); drops 5-30 pt apart are ranked right, drops 0.2 pt apart are not
    se = 100 * math.sqrt(0.04 / 1000)
    assert estimate.paired_se(rows[0]) == pytest.approx(se)
    assert j["noise_ceiling"]["mae_drop_le_10"] == pytest.approx(se * math.sqrt(2 / math.pi), abs=1e-3)
    far = [{**r, "drop": 10.0 * k} for k, r in enumerate(rows)]
    near = [{**r, "drop": 0.2 * k} for k, r in enumerate(rows)]
    assert estimate.noise_ceiling(far, draws=200)["spearman"] > 0.999
    assert estimate.noise_ceiling(near, draws=200)["spearman"] < 0.9
    assert len(estimate.cifar_configs()) == 3 * 8 + 1 + len(estimate.PRUNE)
    # the JPEG-10k judgement swaps in that measurement (drop, agreement, n) and leaves out rows without one
    both = [{**rows[0], "drop_jpeg": 3.3, "agreement_jpeg": 90.0, "n_test_jpeg": 10000}, rows[1]]
    jp = estimate.as_measured_on_jpeg(both)
    assert len(jp) == 1 and (jp[0]["drop"], jp[0]["agreement"], jp[0]["n_test"]) == (3.3, 90.0, 10000)
    assert estimate.paired_se(jp[0]) == pytest.approx(100 * math.sqrt(0.1 / 10000)) and both[0]["n_test"] == 1000
