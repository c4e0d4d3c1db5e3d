"""Structured Multi-Hashing of ResNet-32 at 50 / 25 / 10 % of its variables, against the baseline the paper beats: a
thinner ResNet-32 (width multiplier) with the same variable count. Both learn the full ResNet-32's logits by KD on
real data, on the best data-free source and on bn-stats samples, with the same wall-clock budget per row.

Run: python -m benchmarks.smh [--fractions 0.5 0.25 0.1] [--data cifar10:train-jpeg fast bn-stats]
                              [--methods smh width] [--budget 600] [--init paper] [--steps-from JSON]
Writes benchmarks/results/smh_resnet32.json: rows method, data, fraction, variables, top1_exact, top1_jpeg, seconds,
bytes (+ steps, init or base_width). Synthetic sets are made once (their time is in meta, not in the rows) and shared;
each row's KD is checkpointed under --cache, so an interrupted run resumes.
"""
from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time
from pathlib import Path

import torch

from datafree import evaluate, load_dataset, save_artifact
from datafree.compressors.hashing import HashConfig, make_hashed
from datafree.kd.loop import Distiller, KDConfig
from datafree.kd.run import distill_student_
from datafree.models.record import record_of
from datafree.models.zoo import CifarResNet

from .common import RowStore, cached_set, command_line, data_root, git_commit, machine, pretrained

DATA = ("cifar10:train-jpeg", "fast", "bn-stats")


def width_student(teacher: torch.nn.Module, target: int) -> tuple[torch.nn.Module, int]:
    """The ResNet-32 with the base width (2-16; odd widths pad their option-A shortcuts unevenly) whose variable
    count is closest to `target`."""
    best = None
    for w in range(2, 17):
        m = CifarResNet(32, base_width=w)
        n = sum(p.numel() for p in m.parameters())
        if best is None or abs(n - target) < abs(best[2] - target):
            best = (m, w, n)
    m, w, _ = best  # type: ignore[misc]
    record_of(m).input_spec = record_of(teacher).input_spec
    record_of(m).head = "linear"
    return m, w


def step_seconds(student: torch.nn.Module, teacher: torch.nn.Module, kd: KDConfig, data, n: int = 12) -> float:
    """Seconds per KD step of this student on this machine (a throw-away copy, after 3 warm-up steps)."""
    d = Distiller(copy.deepcopy(student), teacher, kd.replace(steps=n + 3, val_every=10 ** 6), source=data)
    d.run(steps=3, progress=False)
    t0 = time.perf_counter()
    d.run(steps=n, progress=False)
    return (time.perf_counter() - t0) / n


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--fractions", nargs="+", type=float, default=[0.5, 0.25, 0.1])
    p.add_argument("--data", nargs="+", default=list(DATA))
    p.add_argument("--methods", nargs="+", default=["smh", "width"], choices=["smh", "width"])
    p.add_argument("--budget", type=float, default=600.0, help="KD wall-clock seconds per row")
    p.add_argument("--steps-from", default=None, metavar="JSON",
                   help="equal steps instead of equal time: each row runs as many KD steps as the smh row of this "
                        "result file with the same data and fraction (e.g. the width baseline at SMH's step count)")
    p.add_argument("--init", default="paper", choices=["paper", "svd"], help="SMH initialization")
    p.add_argument("--num-synth", type=int, default=2048, help="samples of each synthetic set")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--mixup", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="benchmarks/results/smh_resnet32.json")
    p.add_argument("--cache", default="benchmarks/cache")
    a = p.parse_args(argv)
    root = data_root()
    torch.manual_seed(a.seed)
    teacher = pretrained("resnet32")
    tests = {s: load_dataset(f"cifar10:test-{s}", record_of(teacher).input_spec, root) for s in ("exact", "jpeg")}
    meta = {"benchmark": "smh_resnet32", "config": vars(a), "seed": a.seed, "commit": git_commit(), "machine": machine(),
            "command": command_line("benchmarks.smh", a),
            "protocol": f"KD from the full ResNet-32 for {a.budget:.0f} s of training per row (steps = budget / measured "
                        "step time of that student); synthetic sets made once beforehand (times in meta.synthesis)"}
    smh_steps: dict[tuple[str, float], int] = {}
    if a.steps_from:
        try:
            ref = json.loads(Path(a.steps_from).read_text())["rows"]
        except (OSError, ValueError, KeyError) as e:
            raise SystemExit(f"--steps-from {a.steps_from}: not a readable result file ({e}); give smh_resnet32.json") from None
        smh_steps = {(r["data"], r["fraction"]): r["steps"] for r in ref if r.get("method") == "smh"}
        missing = [(d, f) for d in a.data for f in a.fractions if (d, f) not in smh_steps]
        if missing:
            raise SystemExit(f"--steps-from {a.steps_from} has no smh row for {missing}; run those rows first")
        meta["protocol"] = (f"KD from the full ResNet-32 for the step count of the smh row with the same data and "
                            f"fraction in {a.steps_from} (equal steps, not equal time)")
    store = RowStore(a.out, meta, selection=("fractions", "data", "methods"))
    store.run({"method": "teacher", "data": "none", "fraction": 1.0},
              lambda: {"variables": sum(p.numel() for p in teacher.parameters()),
                       **{f"top1_{s}": evaluate(teacher, d)["top1"] for s, d in tests.items()}})
    sources, synth = {}, {}
    for name in a.data:
        if ":" in name:
            sources[name] = load_dataset(name, record_of(teacher).input_spec, root)
        else:
            d, man = cached_set(teacher, "resnet32", name, a.num_synth, 5 if name == "fast" else 100, a.seed, a.cache)
            sources[name], synth[name] = d, float(man.get("seconds") or 0.0)
    store.meta["synthesis"] = {**store.old_meta.get("synthesis", {}), **synth}  # a subset rerun keeps earlier times
    total = sum(p.numel() for p in teacher.parameters())
    for frac in a.fractions:
        for name in a.data:
            for method in a.methods:
                def row(frac=frac, name=name, method=method) -> dict:
                    if method == "smh":
                        student = make_hashed(teacher, HashConfig(fraction=frac, init=a.init, seed=a.seed))
                        extra, tag = {"init": a.init, "M": record_of(student).reports["hash"]["M"]}, ""
                    else:
                        student, w = width_student(teacher, round(frac * total))
                        extra, tag = {"base_width": w}, f"_w{w}"
                    kd = KDConfig.preset("hash", steps=1, batch_size=a.batch_size, lr=a.lr, mixup=a.mixup,
                                         seed=a.seed, val_every=10 ** 6)
                    if a.steps_from:
                        steps = smh_steps[(name, frac)]
                        tag += f"_s{steps}"
                    else:
                        steps = max(1, int(a.budget / step_seconds(student, teacher, kd, sources[name])))
                    ck = Path(a.cache) / "smh_ckpt" / f"{method}{tag}_{name.replace(':', '-')}_{frac}_b{a.budget:.0f}"
                    r = distill_student_(student, teacher, kd.replace(steps=steps), sources[name],
                                         checkpoint_dir=str(ck), progress=False)
                    with tempfile.TemporaryDirectory() as d:
                        f = Path(d) / "m.pt"
                        if method == "smh":
                            record_of(student).source = record_of(teacher).source
                            save_artifact(student, f)
                        else:
                            torch.save(student.state_dict(), f)
                        size = f.stat().st_size
                    return {"variables": sum(p.numel() for p in student.parameters()), "steps": steps,
                            "seconds": r["seconds"], "bytes": size,
                            **{f"top1_{s}": evaluate(student, dd)["top1"] for s, dd in tests.items()}, **extra}

                rr = store.run({"method": method, "data": name, "fraction": frac}, row)
                print(f"{method} {name} {frac}: {rr['variables']} variables, top-1 {rr['top1_exact']:.2f} / "
                      f"{rr['top1_jpeg']:.2f} ({rr['steps']} steps, {rr['seconds']:.0f} s)", flush=True)
    # with --steps-from the smh rows are the reference file's own, so the width rows alone are the whole protocol
    store.finish(complete=set(a.data) == set(DATA) and sorted(a.fractions) == [0.1, 0.25, 0.5]
                 and set(a.methods) == ({"width"} if a.steps_from else {"smh", "width"}))


if __name__ == "__main__":
    main()
