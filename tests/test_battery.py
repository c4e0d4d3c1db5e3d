"""The reliability battery: bad input across every subcommand. Each case exits non-zero with one line on stderr that
names the problem (and the way out), no traceback, no leftover *.tmp files, and every input file unchanged."""
import hashlib
import json
import math
from pathlib import Path

import pytest
import torch

import datafree as df
from datafree.cli import main


@pytest.fixture(scope="module")
def env(tmp_path_factory, digits_teacher):
    """Files a careless user points the tool at: good ones, and their broken twins."""
    d = tmp_path_factory.mktemp("battery")
    m, w = digits_teacher
    f = {"w": w, "dir": str(d / "adir")}
    Path(f["dir"]).mkdir()
    (d / "text.pt").write_text("this is not a model\n")
    (d / "random.pt").write_bytes(bytes(range(256)) * 64)
    (d / "empty.pt").write_bytes(b"")
    torch.save({"weight": torch.zeros(3)}, d / "other.pt")  # a state dict of something else
    torch.save(df.create_model("resnet20").state_dict(), d / "resnet20.pt")
    sd = {k: v.clone() for k, v in m.state_dict().items()}
    sd["fc.weight"][0, 0] = math.nan
    torch.save(sd, d / "nan.pt")
    torch.manual_seed(0)
    torch.save(df.create_model("small_cnn", num_classes=8).state_dict(), d / "w8.pt")
    f["w8"] = str(d / "w8.pt")
    f.update(text=str(d / "text.pt"), random=str(d / "random.pt"), empty=str(d / "empty.pt"), other=str(d / "other.pt"),
             r20=str(d / "resnet20.pt"), nan=str(d / "nan.pt"), file=str(d / "text.pt"))
    syn = d / "set"
    df.synthesize(m, "gaussian", df.make_config("gaussian", num=24, batch_size=8), out=str(syn), progress=False)
    f["set"] = str(syn)
    shards = sorted(p for p in syn.iterdir() if p.suffix == ".npz")
    assert len(shards) >= 3
    for name, broken in (("noshard", "delete"), ("truncshard", "truncate"), ("listmanifest", "manifest-list"),
                         ("badjson", "manifest-json")):
        b = d / name
        b.mkdir()
        for p in syn.iterdir():
            (b / p.name).write_bytes(p.read_bytes())
        bs = sorted(p for p in b.iterdir() if p.suffix == ".npz")
        if broken == "delete":
            bs[1].unlink()
        elif broken == "truncate":
            bs[1].write_bytes(bs[1].read_bytes()[:100])
        elif broken == "manifest-list":
            (b / "manifest.json").write_text("[]")
        else:
            (b / "manifest.json").write_text("{not json")
        f[name] = str(b)
    (d / "nomanifest").mkdir()
    f["nomanifest"] = str(d / "nomanifest")
    q = d / "q.pt"
    assert main(["quantize", "small_cnn", "--weights", w, "--calib", f["set"], "--out", str(q), "--no-progress"]) == 0
    f["q"] = str(q)
    (d / "q_trunc.pt").write_bytes(q.read_bytes()[: q.stat().st_size // 2])
    f["qtrunc"] = str(d / "q_trunc.pt")
    f["out"] = str(d / "out.pt")
    f["outdir"] = str(d / "outset")
    f["under_file"] = str(d / "text.pt" / "x.pt")
    return f


M = ["small_cnn", "--weights", "{w}"]
Q = ["quantize", *M, "--calib", "{set}", "--out", "{out}"]
SY = ["synthesize", *M, "--method", "gaussian", "--num", "8", "--out", "{outdir}"]
DI = ["distill", *M, "--student", "small_cnn", "--data", "{set}", "--steps", "2", "--out", "{out}"]
PR = ["prune", *M, "--structured", "--sparsity", "0.5", "--out", "{out}"]
HA = ["hash", *M, "--fraction", "0.5", "--data", "{set}", "--steps", "2", "--out", "{out}"]
EX = ["extend", "small_cnn", "--weights", "{w8}", "--new-data", "digits:train", "--new-classes", "8-9", "--num-classes",
      "8", "--method", "finetune-new", "--steps", "2", "--out", "{out}"]
EV = ["evaluate", *M, "--data", "digits:test"]
SI = ["similarity", *M, "--data", "{set}"]
EP = ["export", *M, "--out", "{out}"]


def _sub(argv, key, value):
    """argv with the value after flag `key` replaced (or the flag appended)."""
    out = list(argv)
    if key in out:
        out[out.index(key) + 1] = value
    else:
        out += [key, value]
    return out


CASES = []
# weights that are not what they claim, for every subcommand that loads a model
for cmd, argv in (("evaluate", EV), ("quantize", Q), ("synthesize", SY), ("export", EP), ("prune", PR),
                  ("distill", DI), ("hash", HA), ("similarity", SI)):
    CASES += [
        (f"{cmd}-missing-weights", _sub(argv, "--weights", "/nonexistent/w.pt"), r"not found|no such|does not exist"),
        (f"{cmd}-text-weights", _sub(argv, "--weights", "{text}"), r"weights|state dict|checkpoint|not a"),
        (f"{cmd}-random-weights", _sub(argv, "--weights", "{random}"), r"weights|state dict|checkpoint|not a"),
    ]
CASES += [
    ("evaluate-empty-weights", _sub(EV, "--weights", "{empty}"), r"empty|weights|checkpoint"),
    ("evaluate-other-state-dict", _sub(EV, "--weights", "{other}"), r"weights|match|keys"),
    ("evaluate-wrong-architecture", _sub(EV, "--weights", "{r20}"), r"weights|match|architecture|shape"),
    ("evaluate-unknown-model", ["evaluate", "no_such_model", "--data", "digits:test"], r"unknown model|no_such_model"),
    ("evaluate-unknown-spec", _sub(EV, "--data", "digits:nope"), r"dataset|spec"),
    ("evaluate-truncated-artifact", ["evaluate", "{qtrunc}", "--data", "digits:test"], r"truncated|unreadable|corrupt|not a"),
    ("evaluate-device-absent", EV + ["--device", "cuda:7"], r"device"),
    ("evaluate-threads-zero", EV + ["--threads", "0"], r"--threads"),
    ("evaluate-threads-negative", EV + ["--threads", "-2"], r"--threads"),
    ("quantize-nan-weights", _sub(Q, "--weights", "{nan}"), r"NaN|nan|not finite"),
    ("synthesize-nan-weights", _sub(SY, "--weights", "{nan}"), r"NaN|nan|not finite"),
    ("quantize-out-is-dir", _sub(Q, "--out", "{dir}"), r"directory"),
    ("quantize-out-under-file", _sub(Q, "--out", "{under_file}"), r"not a directory|is a file|cannot write"),
    ("quantize-out-is-weights", _sub(Q, "--out", "{w}"), r"--out|overwrite|input"),
    ("quantize-out-is-calib-set", _sub(Q, "--out", "{set}"), r"directory|--out"),
    ("distill-out-is-dir", _sub(DI, "--out", "{dir}"), r"directory"),
    ("distill-out-is-weights", _sub(DI, "--out", "{w}"), r"--out|overwrite|input"),
    ("prune-out-is-dir", _sub(PR, "--out", "{dir}"), r"directory"),
    ("prune-out-under-file", _sub(PR, "--out", "{under_file}"), r"not a directory|is a file|cannot write"),
    ("hash-out-is-dir", _sub(HA, "--out", "{dir}"), r"directory"),
    ("hash-out-is-weights", _sub(HA, "--out", "{w}"), r"--out|overwrite|input"),
    ("extend-out-is-dir", _sub(EX, "--out", "{dir}"), r"directory"),
    ("extend-out-is-weights", _sub(EX, "--out", "{w8}"), r"--out|overwrite|input"),
    ("export-out-is-dir", _sub(EP, "--out", "{dir}"), r"directory"),
    ("export-out-is-weights", _sub(EP, "--out", "{w}"), r"--out|overwrite|input"),
    ("synthesize-out-is-file", _sub(SY, "--out", "{text}"), r"file|directory"),
    ("synthesize-num-negative", _sub(SY, "--num", "-5"), r"--num|num"),
    ("synthesize-num-zero", _sub(SY, "--num", "0"), r"--num|num"),
    ("synthesize-user-std-zero", ["synthesize", "small_cnn", "--weights", "{w}", "--input-shape", "1,8,8", "--mean", "0",
                                  "--std", "0", "--num-classes", "10", "--method", "gaussian", "--num", "4", "--out",
                                  "{outdir}"], r"std"),
    ("synthesize-user-std-negative", ["synthesize", "small_cnn", "--weights", "{w}", "--input-shape", "1,8,8", "--mean",
                                      "0", "--std", "-1", "--num-classes", "10", "--method", "gaussian", "--num", "4",
                                      "--out", "{outdir}"], r"std"),
    ("synthesize-user-mean-nan", ["synthesize", "small_cnn", "--weights", "{w}", "--input-shape", "1,8,8", "--mean",
                                  "nan", "--std", "1", "--num-classes", "10", "--method", "gaussian", "--num", "4",
                                  "--out", "{outdir}"], r"mean|finite|NaN"),
    ("synthesize-user-std-inf", ["synthesize", "small_cnn", "--weights", "{w}", "--input-shape", "1,8,8", "--mean", "0",
                                 "--std", "inf", "--num-classes", "10", "--method", "gaussian", "--num", "4", "--out",
                                 "{outdir}"], r"std|finite"),
    ("synthesize-wrong-input-shape", ["synthesize", "small_cnn", "--weights", "{w}", "--input-shape", "3,32,32", "--mean",
                                      "0,0,0", "--std", "1,1,1", "--num-classes", "10", "--method", "gaussian", "--num",
                                      "4", "--out", "{outdir}"], r"shape|channels|input"),
    ("quantize-calib-missing", _sub(Q, "--calib", "/nonexistent/set"), r"not found|--calib|source"),
    ("quantize-calib-no-manifest", _sub(Q, "--calib", "{nomanifest}"), r"manifest|synthetic set"),
    ("quantize-calib-deleted-shard", _sub(Q, "--calib", "{noshard}"), r"shard|missing"),
    ("quantize-calib-truncated-shard", _sub(Q, "--calib", "{truncshard}"), r"shard|truncated|unreadable|corrupt"),
    ("quantize-calib-manifest-list", _sub(Q, "--calib", "{listmanifest}"), r"manifest"),
    ("quantize-calib-manifest-json", _sub(Q, "--calib", "{badjson}"), r"manifest"),
    ("evaluate-set-deleted-shard", _sub(EV, "--data", "{noshard}"), r"shard|missing|dataset"),
    ("similarity-set-truncated-shard", _sub(SI, "--data", "{truncshard}"), r"shard|truncated|unreadable|corrupt"),
    ("similarity-num-negative", SI + ["--num", "-1"], r"--num|num"),
    ("quantize-w-bits-1", Q + ["--w-bits", "1"], r"w.bits"),
    ("quantize-a-bits-9", Q + ["--a-bits", "9"], r"a.bits"),
    ("quantize-num-calib-zero", Q + ["--num-calib", "0"], r"num.calib"),
    ("quantize-finetune-negative", Q + ["--finetune-steps", "-3"], r"finetune|steps"),
    ("prune-sparsity-above-one", _sub(PR, "--sparsity", "1.5"), r"sparsity"),
    ("prune-sparsity-negative", _sub(PR, "--sparsity", "-0.1"), r"sparsity"),
    ("prune-finetune-without-data", PR + ["--finetune-steps", "5"], r"--data"),
    ("distill-steps-negative", _sub(DI, "--steps", "-1"), r"steps"),
    ("distill-method-and-data", DI + ["--method", "gaussian"], r"--method|--data"),
    ("distill-unknown-student", _sub(DI, "--student", "no_such_model"), r"unknown model|no_such_model"),
    ("distill-student-weights-text", DI + ["--student-weights", "{text}"], r"weights|checkpoint|not a"),
    ("distill-checkpoint-dir-is-file", DI + ["--checkpoint-dir", "{text}"], r"checkpoint"),
    ("hash-fraction-zero", _sub(HA, "--fraction", "0"), r"fraction"),
    ("hash-fraction-above-one", _sub(HA, "--fraction", "2"), r"fraction"),
    ("hash-budget-too-small", HA + ["--variables", "50"], r"--fraction/--variables"),
    ("extend-wrong-class-count", _sub(EX, "--num-classes", "12"), r"class|match|shape|size"),
    ("extend-bad-class-range", _sub(EX, "--new-classes", "9-2"), r"class"),
    ("extend-new-classes-overlap-old", _sub(EX, "--new-classes", "5-9"), r"class|label"),
    ("export-bad-opset", EP + ["--opset", "9"], r"opset"),
    ("export-check-unknown-spec", EP + ["--check", "digits:nope"], r"dataset|spec"),
    ("export-ort-without-calib", EP + ["--calibrate-with", "onnxruntime"], r"--calib"),
    ("export-latency-batch-zero", EP + ["--check", "digits:test", "--latency-batch", "0"], r"latency.batch"),
]


def _fill(argv, f):
    return [a.format(**f) for a in argv]


def _digest(paths):
    out = {}
    for p in paths:
        p = Path(p)
        if p.is_file():
            out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
        elif p.is_dir():
            for q in sorted(p.rglob("*")):
                if q.is_file():
                    out[str(q)] = hashlib.sha256(q.read_bytes()).hexdigest()
    return out


def test_battery_has_enough_cases():
    assert len(CASES) >= 60
    assert len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("name,argv,pattern", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_loses_nothing(env, capsys, name, argv, pattern):
    import re

    argv = _fill(argv, env)
    inputs = [env[k] for k in ("w", "w8", "set", "q", "text", "dir")]
    before = _digest(inputs)
    rc = main(argv)
    err = capsys.readouterr().err.strip()
    assert rc != 0, f"{name}: exit 0"
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in err, f"{name}: {err}"
    assert lines[0].startswith("datafree: error:"), lines[0]
    assert re.search(pattern, lines[0], re.I), f"{name}: {lines[0]}"
    assert _digest(inputs) == before, f"{name}: an input file changed"
    assert not list(Path(env["out"]).parent.rglob("*.tmp")), f"{name}: left *.tmp files"
    for o in (env["out"], env["outdir"]):
        p = Path(o)
        if p.is_file():
            p.unlink()
        elif p.is_dir():
            import shutil

            shutil.rmtree(p)


def test_disk_full_while_saving_is_one_line_and_leaves_no_tmp(env, capsys, monkeypatch, tmp_path):
    """ENOSPC during the final write: a one-line error naming the path, no *.tmp, nothing half-written."""
    import errno

    import datafree.core.utils as u

    real = u.atomic_write

    def full(path, write, *a, **k):
        def boom(fh):
            write(fh)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, boom, *a, **k)

    monkeypatch.setattr(u, "atomic_write", full)
    out = tmp_path / "q.pt"
    rc = main(["quantize", "small_cnn", "--weights", env["w"], "--calib", env["set"], "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert rc != 0 and len(err.splitlines()) == 1 and "No space left" in err and str(out) in err
    assert not out.exists() and not list(tmp_path.glob("*.tmp"))


def test_synthesis_of_a_model_with_nan_outputs_writes_no_complete_set(env, tmp_path, capsys):
    out = tmp_path / "s"
    rc = main(["synthesize", "small_cnn", "--weights", env["nan"], "--method", "gaussian", "--num", "8", "--out", str(out)])
    assert rc != 0
    if (out / "manifest.json").exists():
        assert not json.loads((out / "manifest.json").read_text()).get("complete")


def _weights(path):
    obj = torch.load(path, map_location="cpu", weights_only=True)
    sd = obj.get("state_dict", obj) if isinstance(obj, dict) else obj
    return {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}


REPRO = {
    "quantize": ["quantize", *M, "--calib", "{set}", "--w-bits", "4", "--a-bits", "4", "--finetune-steps", "3",
                 "--out", "{o}"],
    "distill": ["distill", *M, "--student", "small_cnn", "--data", "{set}", "--steps", "3", "--out", "{o}"],
    "distill-method": ["distill", *M, "--student", "small_cnn", "--method", "dafl", "--iterations", "2",
                       "--per-round", "8", "--steps", "3", "--out", "{o}"],
    "prune": ["prune", *M, "--structured", "--sparsity", "0.5", "--data", "{set}", "--finetune-steps", "3", "--out", "{o}"],
    "hash": ["hash", *M, "--fraction", "0.5", "--data", "{set}", "--steps", "3", "--out", "{o}"],
    "extend": ["extend", "small_cnn", "--weights", "{w8}", "--num-classes", "8", "--new-data", "digits:train",
               "--new-classes", "8-9", "--method", "lwf", "--steps", "3", "--out", "{o}"],
}


@pytest.mark.parametrize("cmd", list(REPRO))
def test_same_seed_same_weights(env, tmp_path, capsys, cmd):
    outs = []
    for i in range(2):
        o = tmp_path / f"{i}.pt"
        argv = [a.format(**env, o=str(o)) for a in REPRO[cmd]] + ["--no-progress", "--seed", "3"]
        assert main(argv) == 0, capsys.readouterr().err
        outs.append(_weights(o))
    assert outs[0].keys() == outs[1].keys()
    for k in outs[0]:
        assert torch.equal(outs[0][k], outs[1][k]), f"{cmd}: {k} differs between two runs with the same seed"
