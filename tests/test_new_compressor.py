"""The recipe for a new compressor (ARCHITECTURE.md, "Adding a compressor"), followed once with a test double: a module
that registers `scale-head` (the classifier's weights times a factor) and a CLI family that exposes it. Nothing else in
the package is touched; the double then works through the library, the artifact format, the CLI and `datafree list`."""
import copy
import dataclasses
from typing import Any

import pytest
import torch

import datafree as df
from datafree.cli import common, main
from datafree.compressors import COMPRESSORS, register_compressor, run_compressor
from datafree.compressors.artifact import load_artifact, save_artifact
from datafree.compressors.base import no_rebuild, record_transform
from datafree.core.config import Config, check, opt
from datafree.models import head_of
from datafree.models.record import record_of


# -- step 1: its own module (config, apply, rebuild, check, registration) ------------------------------------------
@dataclasses.dataclass
class ScaleConfig(Config):
    """Multiply the classifier head's weights by `factor`."""

    factor: float = opt(0.5, "the factor", cli=True)

    def validate(self) -> None:
        check(self.factor > 0, f"factor must be > 0, got {self.factor}", "factor")


def _apply(model, data, config: ScaleConfig, progress: bool = False, **_: Any):
    out = copy.deepcopy(model)
    with torch.no_grad():
        out.get_submodule(head_of(out)).weight.mul_(config.factor)
    record_of(out).reports["scale-head"] = {"factor": config.factor}
    return record_transform(out, "scale-head", config)


def _check(s, model, t, field):
    s.number(t["config"], "factor", f"{field}.config", lo=0, kind=float)


def _register():
    register_compressor("scale-head", ScaleConfig, _apply, no_rebuild, "scale the classifier (a test double)", _check)


# -- step 2: its CLI family (a parser and a command that calls run_compressor) ------------------------------------
def _cmd(a):
    common.check_out(a, "file")
    model = common.load_model(a)
    res = run_compressor(model, "scale-head", None, ScaleConfig(factor=a.factor))
    common.save(res.model, a.out, teacher=model)
    common.emit(a, {"out": a.out, **res.report}, f"scaled the head of {a.model} to {a.out}")
    return 0


def _add(sub, ctx):
    s = common.command(sub, "scale-head", _cmd, "scale the classifier head (a test double)")
    common.model_args(s)
    s.add_argument("--factor", type=float, default=0.5, help="the factor")
    common.output_args(s, out="output file (.pt)")


@pytest.fixture
def scale_head(monkeypatch):
    """The double registered for one test (step 3 of the recipe: one import line and one `families` entry)."""
    from datafree import cli

    monkeypatch.setattr(COMPRESSORS, "_items", dict(COMPRESSORS._items))
    _register()
    base = cli.families
    monkeypatch.setattr(cli, "families", lambda: [*base(), _add])


def test_a_new_compressor_works_everywhere_once_registered(scale_head, digits_teacher, digits_test, tmp_path, capsys):
    teacher, w = digits_teacher
    res = run_compressor(teacher, "scale-head", None, ScaleConfig(factor=0.25))
    assert torch.equal(res.model.fc.weight, 0.25 * teacher.fc.weight) and res.report["factor"] == 0.25
    save_artifact(res.model, tmp_path / "lib.pt", teacher=teacher)
    back = load_artifact(tmp_path / "lib.pt")
    with torch.no_grad():
        assert torch.equal(back(digits_test.x), res.model(digits_test.x))

    assert main(["scale-head", "small_cnn", "--weights", w, "--factor", "0.25", "--out", str(tmp_path / "cli.pt")]) == 0
    a = torch.load(tmp_path / "cli.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "lib.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert main(["evaluate", str(tmp_path / "cli.pt"), "--data", "digits:test", "--json"]) == 0
    capsys.readouterr()
    assert main(["list"]) == 0
    assert "scale-head" in capsys.readouterr().out
    # the file's stored record is checked by the double's own `check`, like any compressor's
    obj = torch.load(tmp_path / "cli.pt", weights_only=True)
    obj["transforms"][-1]["config"]["factor"] = "big"
    torch.save(obj, tmp_path / "bad.pt")
    assert main(["evaluate", str(tmp_path / "bad.pt"), "--data", "digits:test"]) == 2
    err = capsys.readouterr().err
    assert "bad.pt" in err and "factor" in err and len(err.strip().splitlines()) == 1


def test_the_double_is_gone_after_its_test():
    assert "scale-head" not in COMPRESSORS and isinstance(df.list_compressors(), list)
