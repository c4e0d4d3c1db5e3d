"""Every file datafree reads back, damaged one field at a time: a real file of each kind (an artifact of every
compressor, a datafree 0.1 quantized file, a run checkpoint, a synthetic set's manifest and shards) has each field
dropped, given the wrong type or shape, pointed at a layer the model lacks, filled with NaN, or its bytes cut short.
Each case must end in one line on stderr that names the file and the field (or calls the file corrupt), exit code 2,
no traceback, and no output file."""
import copy
import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import datafree as df
from datafree.cli import main
from datafree.models.record import record_of
from tests.conftest import write_legacy_quantized

DROP, TRUNC = object(), object()


def _at(obj, path):
    for k in path[:-1]:
        obj = obj[k]
    return obj


def mutate(obj, path, value):
    """A deep copy of `obj` with the field at `path` set to `value` (DROP removes it)."""
    obj = copy.deepcopy(obj)
    parent = _at(obj, path)
    if value is DROP:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value(parent[path[-1]]) if callable(value) else value
    return obj


def nan_like(t):
    t = t.clone().float()
    t.view(-1)[0] = math.nan
    return t


def grow(t):
    return torch.zeros(*(s + 1 for s in t.shape)) if t.dim() else torch.zeros(2)


@pytest.fixture(scope="module")
def files(tmp_path_factory, digits_teacher):
    """Real files written by the CLI: one artifact per compressor, a 0.1 quantized file, a checkpoint, a set."""
    d = tmp_path_factory.mktemp("mutations")
    m, w = digits_teacher
    torch.manual_seed(0)
    torch.save(df.create_model("small_cnn", num_classes=8).state_dict(), d / "w8.pt")
    M = ["small_cnn", "--weights", w]
    runs = {
        "quantize": ["quantize", *M, "--calib", "digits:train", "--num-calib", "64", "--w-bits", "4", "--a-bits", "4"],
        "prune": ["prune", *M, "--structured", "--sparsity", "0.5"],
        "distill": ["distill", *M, "--student", "small_cnn", "--data", "digits:train", "--steps", "2"],
        "hash": ["hash", *M, "--fraction", "0.5", "--data", "digits:train", "--steps", "2"],
        "extend": ["extend", "small_cnn", "--weights", str(d / "w8.pt"), "--new-data", "digits:train", "--new-classes",
                   "8-9", "--num-classes", "8", "--method", "finetune-new", "--steps", "2"],
    }
    f = {"w": w, "dir": d}
    for name, argv in runs.items():
        out = d / f"{name}.pt"
        assert main(argv + ["--out", str(out), "--no-progress"]) == 0, name
        f[name] = out
    write_legacy_quantized(m, df.load_dataset("digits:train", record_of(m).input_spec).subset(64), d / "legacy.pt")
    f["legacy"] = d / "legacy.pt"
    ck = d / "run.ckpt"
    f["distill_args"] = ["distill", *M, "--student", "small_cnn", "--data", "digits:train", "--steps", "4",
                         "--checkpoint-every", "2", "--kd-batch-size", "16", "--checkpoint-dir"]
    assert main(f["distill_args"] + [str(ck), "--out", str(d / "run.pt"), "--no-progress"]) == 0
    f["ckpt"] = ck
    syn = d / "set"
    assert main(["synthesize", *M, "--method", "gaussian", "--num", "24", "--batch-size", "8", "--out", str(syn),
                 "--no-progress"]) == 0
    f["set"] = syn
    return f


# -- the cases: (kind, id, path into the object, new value, regex the one line must match) -------------------------

ART_TOP = [("format", 7), ("base", "x"), ("input_spec", [1, 8, 8]), ("transforms", {"a": 1}), ("state_dict", [1]),
           ("library_version", 3), ("teacher_fingerprint", 5), ("extra", "x")]
REQUIRED = {"format", "base", "input_spec", "transforms", "state_dict"}


def artifact_cases(kind):
    bias = "fc.bias" if kind != "hash" else "smh_scales"  # a hashed model keeps no per-layer weights or biases
    out = []
    for k, bad in ART_TOP:
        if k in REQUIRED:
            out.append((f"drop-{k}", (k,), DROP, k if k != "format" else "not a .*datafree"))
        out.append((f"type-{k}", (k,), bad, k if k != "format" else "not a .*datafree"))
    out += [
        ("drop-base.model", ("base", "model"), DROP, "base.model"),
        ("type-base.model", ("base", "model"), 7, "base.model"),
        ("swap-base.model", ("base", "model"), "resnet20", "architecture|fingerprint|state_dict"),
        ("type-base.num_classes", ("base", "num_classes"), "ten", "base.num_classes"),
        ("type-base.arch", ("base", "arch"), 5, "base.arch"),
        ("drop-input_spec.shape", ("input_spec", "shape"), DROP, "input_spec.shape"),
        ("shape-input_spec.shape", ("input_spec", "shape"), [1, 8], "input_spec"),
        ("float-input_spec.shape", ("input_spec", "shape"), [1.7, 8, 8], r"input_spec.shape\[0\]"),
        ("nan-input_spec.mean", ("input_spec", "mean"), [math.nan], "input_spec"),
        ("type-input_spec.num_classes", ("input_spec", "num_classes"), "10", "input_spec.num_classes"),
        ("unknown-compressor", ("transforms", -1, "compressor"), "sharpen", "compressor 'sharpen'"),
        ("type-compressor", ("transforms", -1, "compressor"), 3, "compressor"),
        ("drop-config", ("transforms", -1, "config"), DROP, "config"),
        ("type-config", ("transforms", -1, "config"), [1], "config"),
        ("unknown-config-key", ("transforms", -1, "config"), lambda c: {**c, "warp": 9}, "config"),
        ("type-transform", ("transforms", -1), "quantize", r"transforms\[0\]"),
        ("nan-state_dict", ("state_dict", "fc.weight" if kind != "hash" else "smh_X"), nan_like, "NaN"),
        ("shape-state_dict", ("state_dict", bias), grow, "state_dict"),
        ("type-state_dict-value", ("state_dict", bias), [0.0], f"state_dict.{bias}"),
        ("unknown-state_dict-key", ("state_dict", "ghost.weight"), torch.zeros(3), "state_dict"),
    ]
    if kind == "quantize":
        out += [
            ("drop-plan", ("transforms", -1, "plan"), DROP, "plan"),
            ("unknown-layer-plan", ("transforms", -1, "plan", 0, "name"), "no_such_layer", "no_such_layer"),
            ("not-a-conv-plan", ("transforms", -1, "plan", 0, "name"), "pool", "plan"),
            ("type-plan-bits", ("transforms", -1, "plan", 0, "w_bits"), "4", "w_bits"),
            ("range-plan-bits", ("transforms", -1, "plan", 0, "a_bits"), 11, "a_bits"),
            ("unknown-bn-plan", ("transforms", -1, "plan", 0, "bn"), "nobn", "nobn"),
            ("drop-act_quant", ("transforms", -1, "act_quant"), DROP, "act_quant"),
            ("none-act_quant", ("transforms", -1, "act_quant"), None, "act_quant"),
            ("short-act_quant", ("transforms", -1, "act_quant"), lambda v: v[:-1], "act_quant"),
            ("type-act_quant-entry", ("transforms", -1, "act_quant", 0), "yes", "act_quant"),
            ("unknown-layout", ("transforms", -1, "layout"), "diagonal", "layout"),
            ("short-tensor_quant", ("transforms", -1, "tensor_quant"), lambda v: v[:-1], "tensor_quant"),
        ]
    if kind == "hash":
        out += [
            ("drop-entries", ("transforms", -1, "entries"), DROP, "entries"),
            ("unknown-layer-entries", ("transforms", -1, "entries", 0), ["no_such_layer", "weight"], "no_such_layer"),
            ("unknown-tensor-entries", ("transforms", -1, "entries", 0), lambda e: [e[0], "gamma"], "gamma"),
            ("type-n", ("transforms", -1, "n"), "big", r"\.n'"),
            ("zero-M", ("transforms", -1, "M"), 0, r"\.M'"),
        ]
    if kind == "extend":
        out += [
            ("drop-num_classes", ("transforms", -1, "num_classes"), DROP, "num_classes"),
            ("type-num_classes", ("transforms", -1, "num_classes"), "10", "num_classes"),
            ("shrink-num_classes", ("transforms", -1, "num_classes"), 4, "num_classes"),
        ]
    if kind == "prune":
        out += [("type-channels", ("transforms", -1, "channels"), ["many"], "channels")]
    if kind == "distill":
        out += [("type-teacher", ("transforms", -1, "teacher"), 5, "teacher")]
    return out


LEGACY_CASES = [
    ("drop-source", ("source",), DROP, "source"),
    ("type-source", ("source",), "small_cnn", "source"),
    ("drop-source.model", ("source", "model"), DROP, "source.model"),
    ("swap-source.model", ("source", "model"), "resnet20", "plan|state_dict|layer"),
    ("drop-input_spec", ("input_spec",), DROP, "input_spec"),
    ("drop-config", ("config",), DROP, "config"),
    ("type-config-field", ("config", "w_bits"), "four", "w_bits"),
    ("drop-plan", ("plan",), DROP, "plan"),
    ("unknown-layer-plan", ("plan", 0, "name"), "features.99", "features.99"),
    ("drop-act_quant", ("act_quant",), DROP, "act_quant"),
    ("none-act_quant", ("act_quant",), None, "act_quant"),
    ("drop-state_dict", ("state_dict",), DROP, "state_dict"),
    ("nan-state_dict", ("state_dict", "fc.weight"), nan_like, "NaN"),
    ("shape-state_dict", ("state_dict", "fc.bias"), grow, "state_dict"),
]

CKPT_CASES = [
    ("drop-identity", ("identity",), DROP, "identity"),
    ("type-identity", ("identity",), "x", "identity"),
    ("drop-student", ("student",), DROP, "student"),
    ("type-student", ("student",), [1, 2], "student"),
    ("nan-student", ("student", "fc.weight"), nan_like, "NaN"),
    ("shape-student", ("student", "fc.bias"), grow, "student"),
    ("unknown-student-key", ("student", "ghost.weight"), torch.zeros(2), "student"),
    ("drop-distiller", ("distiller",), DROP, "distiller"),
    ("type-distiller", ("distiller",), 3, "distiller"),
    ("drop-opt", ("distiller", "opt"), DROP, "distiller.opt"),
    ("garbage-opt", ("distiller", "opt"), {"state": {}, "param_groups": []}, "distiller"),
    ("drop-sched", ("distiller", "sched"), DROP, "distiller.sched"),
    ("type-gen", ("distiller", "gen"), "seed", "distiller.gen"),
    ("dtype-gen", ("distiller", "gen"), lambda g: g.float(), "distiller.gen"),
    ("drop-step", ("distiller", "step"), DROP, "distiller.step"),
    ("type-step", ("distiller", "step"), 2.5, "distiller.step"),
    ("negative-step", ("distiller", "step"), -1, "distiller.step"),
    ("past-step", ("distiller", "step"), 999, "distiller.step"),
    ("type-history", ("distiller", "history"), {"a": 1}, "distiller.history"),
    ("nan-history-loss", ("distiller", "history", 0, "loss"), math.nan, r"history\[0\].loss"),
    ("nan-elapsed", ("distiller", "elapsed"), math.nan, "distiller.elapsed"),
    ("type-source", ("distiller", "source"), [1], "distiller.source"),
    ("nan-seconds", ("seconds",), math.nan, "seconds"),
    ("type-seconds", ("seconds",), "late", "seconds"),
]

MANIFEST_CASES = [(f"drop-{k}", (k,), DROP, k) for k in ("format", "complete", "method", "num", "shard_size", "input_spec")]
MANIFEST_CASES += [
    ("type-complete", ("complete",), "yes", "complete"),
    ("type-method", ("method",), 3, "method"),
    ("type-num", ("num",), "24", "num"),
    ("zero-num", ("num",), 0, "num"),
    ("float-num", ("num",), 24.5, "num"),
    ("zero-shard_size", ("shard_size",), 0, "shard_size"),
    ("type-seed", ("seed",), "x", "seed"),
    ("type-input_spec", ("input_spec",), [1, 8, 8], "input_spec"),
    ("shape-input_spec", ("input_spec", "shape"), [3, 8, 8], r"'x'.*shape|input_spec"),
    ("classes-input_spec", ("input_spec", "num_classes"), 5, "logits|'y'"),
    ("nan-input_spec-std", ("input_spec", "std"), [math.nan], "input_spec"),
    ("type-shard_stats", ("shard_stats",), [1], "shard_stats"),
    ("type-config", ("config",), "gaussian", "config"),
]

SHARD_CASES = [
    ("drop-x", "x", DROP, "corrupt|'x'"),
    ("drop-y", "y", DROP, "corrupt|'y'"),
    ("drop-logits", "logits", DROP, "corrupt|'logits'"),
    ("shape-x", "x", lambda a: a[:, :, :4], "'x'"),
    ("short-y", "y", lambda a: a[:-1], "'y'"),
    ("shape-logits", "logits", lambda a: a[:, :5], "'logits'"),
    ("nan-x", "x", lambda a: np.where(np.arange(a.size).reshape(a.shape) == 0, np.nan, a).astype(a.dtype), "NaN"),
    ("inf-logits", "logits", lambda a: np.full_like(a, np.inf), "NaN or infinite"),
    ("range-y", "y", lambda a: a + 10, "'y'"),
    ("float-y", "y", lambda a: a.astype(np.float32) + 0.5, "'y'"),
    ("string-x", "x", lambda a: np.array(["a"] * len(a)), "'x'"),
]

KINDS = ["quantize", "prune", "distill", "hash", "extend"]
CASES = [(k, *c) for k in KINDS for c in artifact_cases(k)] + [(k, "truncated-half", (), TRUNC, "corrupt") for k in KINDS]
CASES += [("legacy", *c) for c in LEGACY_CASES] + [("legacy", "truncated-100", (), TRUNC, "corrupt")]
CASES += [("ckpt", *c) for c in CKPT_CASES] + [("ckpt", "truncated-half", (), TRUNC, "corrupt")]
CASES += [("manifest", *c) for c in MANIFEST_CASES] + [("manifest", "truncated-json", (), TRUNC, "corrupt")]
CASES += [("shard", *c) for c in SHARD_CASES] + [("shard", "truncated-shard", (), TRUNC, "corrupt")]


def test_case_count_per_file_kind():
    """>= 60 mutations in all, every kind of file covered."""
    counts = {}
    for c in CASES:
        kind = "artifact" if c[0] in KINDS else c[0]
        counts[kind] = counts.get(kind, 0) + 1
    print("mutation cases per file kind:", counts)
    assert sum(counts.values()) >= 60 and set(counts) == {"artifact", "legacy", "ckpt", "manifest", "shard"}
    assert len({(c[0], c[1]) for c in CASES}) == len(CASES)


def _write_torch(src: Path, dst: Path, path, value) -> None:
    if value is TRUNC:
        b = src.read_bytes()
        dst.write_bytes(b[: len(b) // 2] if "legacy" not in src.name else b[:100])
    else:
        torch.save(mutate(torch.load(src, map_location="cpu", weights_only=True), path, value), dst)


def _prepare(kind, path, value, files, d: Path):
    """Write the damaged file; returns (argv, the file the message must name, the output that must not appear)."""
    out = d / "out.pt"
    if kind in KINDS or kind == "legacy":
        bad = d / f"{kind}_bad.pt"
        _write_torch(files[kind], bad, path, value)
        return ["quantize", str(bad), "--calib", "digits:train", "--num-calib", "16", "--out", str(out)], bad, out
    if kind == "ckpt":
        ck = d / "run.ckpt"
        shutil.copytree(files["ckpt"], ck)
        _write_torch(files["ckpt"] / "state.pt", ck / "state.pt", path, value)
        return files["distill_args"] + [str(ck), "--out", str(out)], ck / "state.pt", out
    s = d / "set"
    shutil.copytree(files["set"], s)
    argv = ["quantize", "small_cnn", "--weights", files["w"], "--calib", str(s), "--out", str(out)]
    if kind == "manifest":
        m = s / "manifest.json"
        if value is TRUNC:
            m.write_text(m.read_text()[:40])
        else:
            m.write_text(json.dumps(mutate(json.loads(m.read_text()), path, value)))
        return argv, m, out
    shard = sorted(s.glob("shard_*.npz"))[1]
    if value is TRUNC:
        shard.write_bytes(shard.read_bytes()[:300])
    else:
        with np.load(shard) as z:
            arrays = {k: z[k] for k in z.files}
        if value is DROP:
            del arrays[path]
        else:
            arrays[path] = value(arrays[path])
        np.savez(shard, **arrays)
    return argv, shard, out


@pytest.mark.parametrize("kind,name,path,value,pattern", CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_damaged_file_is_one_line_exit_2_no_output(files, tmp_path, capsys, kind, name, path, value, pattern):
    argv, where, out = _prepare(kind, path, value, files, tmp_path)
    rc = main(argv + ["--no-progress"])
    err = capsys.readouterr().err.strip()
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2, f"{kind}/{name}: exit {rc}: {err}"
    assert len(lines) == 1 and "Traceback" not in err, f"{kind}/{name}: {err}"
    assert lines[0].startswith("datafree: error:"), lines[0]
    assert where.name in lines[0] or where.parent.name in lines[0], f"{kind}/{name} names no file: {lines[0]}"
    assert re.search(pattern, lines[0]), f"{kind}/{name}: {lines[0]}"
    assert not out.exists() and not list(tmp_path.glob("*.tmp")), f"{kind}/{name}: wrote output"
