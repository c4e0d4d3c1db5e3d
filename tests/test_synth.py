import pytest
import torch

import datafree as df
from datafree.data import read_manifest
from datafree.data.synthetic import SyntheticSetWriter
from datafree.synth import SYNTHESIZERS, BNStatHooks, bn_loss, list_synthesizers, make_config, synthesize
from tests.conftest import measured


def _tiny():
    torch.manual_seed(0)
    m = df.create_model("small_cnn")
    # running statistics = the true statistics of N(0.3, 0.5²) inputs (cumulative average)
    with torch.no_grad():
        for bn in m.modules():
            if isinstance(bn, torch.nn.BatchNorm2d):
                bn.momentum = None
        m.train()
        for _ in range(10):
            m(torch.randn(64, 1, 8, 8) * 0.5 + 0.3)
    return m.eval()


def _bn_loss(m, x, form="kl"):
    """The BN-matching loss of inputs x through m."""
    with torch.no_grad(), BNStatHooks(m) as h:
        m(x)
        return bn_loss(h, form)[0].item()


@pytest.mark.parametrize("method", list_synthesizers())
def test_every_synthesizer_smoke(method):
    m = _tiny()
    m.train()  # caller's mode must come back untouched
    m.features[0].weight.requires_grad_(False)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    cfg = make_config(method, num=10, batch_size=4, iterations=3)
    student = df.create_model("small_cnn") if SYNTHESIZERS.get(method).needs_student else None
    data = synthesize(m, method, cfg, progress=False, student=student)
    assert data.x.shape == (10, 1, 8, 8) and data.y.shape == (10,) and data.logits.shape == (10, 10)
    assert torch.isfinite(data.x).all() and torch.isfinite(data.logits).all()
    assert m.training and not m.features[0].weight.requires_grad and m.fc.weight.requires_grad
    for k, v in m.state_dict().items():
        assert torch.equal(v, before[k]), f"{method} changed {k}"
    assert not any(mod._forward_hooks for mod in m.modules())
    if SYNTHESIZERS.get(method).class_conditional:
        assert data.y.tolist() == [i % 10 for i in range(10)]


def test_bn_stats_lowers_bn_loss_below_noise():
    m = _tiny()
    data = synthesize(m, "bn-stats", make_config("bn-stats", num=32, batch_size=32, iterations=60), progress=False)
    # measured in test_bounds.json, 20 runs: ratio 0.0010 in all (fp32 and bf16)
    assert measured("bnstats.bn_ratio_to_noise", _bn_loss(m, data.x) / _bn_loss(m, torch.randn(32, 1, 8, 8))) < 0.5


def test_resume_after_interruption_gives_same_set(tmp_path, monkeypatch):
    m = _tiny()
    cfg = make_config("bn-stats", num=12, batch_size=4, iterations=4, seed=3)
    full = synthesize(m, "bn-stats", cfg, out=str(tmp_path / "full"), progress=False)

    orig = SyntheticSetWriter.write_shard
    calls = {"n": 0}

    def flaky(self, *a, **k):
        if calls["n"] == 1:
            raise KeyboardInterrupt
        calls["n"] += 1
        return orig(self, *a, **k)

    monkeypatch.setattr(SyntheticSetWriter, "write_shard", flaky)
    with pytest.raises(KeyboardInterrupt):
        synthesize(m, "bn-stats", cfg, out=str(tmp_path / "part"), progress=False)
    assert sorted(p.name for p in (tmp_path / "part").glob("shard_*.npz")) == ["shard_00000.npz"]
    with pytest.raises(df.DatafreeError, match="incomplete"):
        df.SyntheticSet(tmp_path / "part")
    monkeypatch.setattr(SyntheticSetWriter, "write_shard", orig)
    # a kill -9 inside atomic_write leaves its temporary; the resumed run removes those, and only those
    (tmp_path / "part" / "shard_00001.npz.k3x_9q2a.tmp").write_bytes(b"half a shard")
    (tmp_path / "part" / "user-notes.tmp").write_text("not ours")
    resumed = synthesize(m, "bn-stats", cfg, out=str(tmp_path / "part"), progress=False)
    assert sorted(p.name for p in (tmp_path / "part").glob("*.tmp")) == ["user-notes.tmp"]
    assert torch.equal(resumed.x, full.x) and torch.equal(resumed.y, full.y)
    assert (tmp_path / "part" / "grid.png").is_file()
    # the recorded synthesis time covers every shard, the one made before the interruption included
    man = read_manifest(tmp_path / "part")
    assert sorted(man["shard_stats"]) == ["0", "1", "2"]
    assert man["seconds"] == pytest.approx(sum(v["seconds"] for v in man["shard_stats"].values()), abs=0.02)
    assert man["seconds"] > 0
    # reopening a finished set (reuse) keeps its time instead of resetting it to 0
    before = read_manifest(tmp_path / "full")["seconds"]
    synthesize(m, "bn-stats", cfg, out=str(tmp_path / "full"), progress=False)
    assert read_manifest(tmp_path / "full")["seconds"] == before > 0


def test_reusing_out_with_other_config_is_refused(tmp_path):
    m = _tiny()
    synthesize(m, "gaussian", make_config("gaussian", num=4), out=str(tmp_path / "s"), progress=False)
    with pytest.raises(df.DatafreeError, match="different synthetic set"):
        synthesize(m, "gaussian", make_config("gaussian", num=8), out=str(tmp_path / "s"), progress=False)


def test_nan_loss_is_a_clear_error():
    m = _tiny()
    with torch.no_grad():
        m.features[0].weight.fill_(float("nan"))
    with pytest.raises(df.DatafreeError, match="lower --lr"):
        synthesize(m, "bn-stats", make_config("bn-stats", num=4, iterations=2), progress=False)


def test_config_validation_and_roundtrip():
    cfg = make_config("bn-stats", num=5, lr=0.1)
    assert type(cfg).from_dict(cfg.to_dict()) == cfg
    with pytest.raises(df.DatafreeError, match="lr"):
        make_config("bn-stats", lr=-1.0)
    with pytest.raises(df.DatafreeError, match="form"):
        make_config("bn-stats", form="l3")


def test_set_written_before_a_new_option_existed_is_reused(tmp_path):
    import json

    m = _tiny()
    cfg = make_config("bn-stats", num=4, batch_size=4, iterations=2)
    first = synthesize(m, "bn-stats", cfg, out=str(tmp_path / "s"), progress=False)
    man = json.loads((tmp_path / "s" / "manifest.json").read_text())
    del man["config"]["channels_last"]  # as written by an older version
    (tmp_path / "s" / "manifest.json").write_text(json.dumps(man))
    again = synthesize(m, "bn-stats", cfg, out=str(tmp_path / "s"), progress=False)
    assert torch.equal(first.x, again.x)
    with pytest.raises(df.DatafreeError, match=r"different synthetic set \(differs in config \(channels_last False -> True\)\)"):
        synthesize(m, "bn-stats", cfg.replace(channels_last=True), out=str(tmp_path / "s"), progress=False)


def test_bf16_autocast_still_matches_bn_statistics():
    m = _tiny()
    data = synthesize(m, "bn-stats", make_config("bn-stats", num=32, batch_size=32, iterations=60, bf16=True), progress=False)
    assert data.x.dtype == torch.float32 and torch.isfinite(data.x).all()
    assert measured("bnstats_bf16.bn_ratio_to_noise", _bn_loss(m, data.x) / _bn_loss(m, torch.randn(32, 1, 8, 8))) < 0.5


def test_low_res_synthesis_optimizes_at_half_size_first_and_is_off_by_default(monkeypatch):
    """`low_res`: the first part of the iterations at half resolution (each step ~4x cheaper), then full size."""
    import datafree as df
    from datafree.models import InputSpec
    from datafree.models.record import record_of

    torch.manual_seed(0)
    m = df.create_model("small_cnn_cifar")
    record_of(m).input_spec = InputSpec((3, 32, 32), (0.5,) * 3, (0.5,) * 3, 10)
    sizes = []
    m.register_forward_pre_hook(lambda mod, inp: sizes.append(tuple(inp[0].shape[-2:])))
    cfg = df.make_config("bn-stats", num=8, batch_size=8, iterations=10, low_res=0.6)
    data = df.synthesize(m, "bn-stats", cfg, progress=False)
    assert data.x.shape == (8, 3, 32, 32) and torch.isfinite(data.x).all()
    run = sizes[:10]
    assert run[:6] == [(16, 16)] * 6 and run[6:10] == [(32, 32)] * 4, run
    sizes.clear()
    df.synthesize(m, "bn-stats", df.make_config("bn-stats", num=8, batch_size=8, iterations=4), progress=False)
    assert sizes[:4] == [(32, 32)] * 4  # off by default
    sizes.clear()
    df.synthesize(m, "bn-stats", cfg.replace(low_res_scale=0.25), progress=False)
    assert sizes[:10] == [(8, 8)] * 6 + [(32, 32)] * 4  # a quarter of each side
    with pytest.raises(df.DatafreeError, match="low_res must be < 1"):
        df.make_config("bn-stats", low_res=1.0)
