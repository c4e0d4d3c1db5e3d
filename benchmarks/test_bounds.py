"""How far do the trained results the test suite asserts on move? Re-runs every test that asserts an accuracy or a loss
after training (those that call `measured(...)`, found by reading the test files) under other seeds (the digits
teacher's training seed and the global RNG), 1 and 2 torch threads, and with or without a second CPU-heavy torch job
beside it; writes each bound's spread to benchmarks/results/test_bounds.json. Resumes: finished runs are kept.

    python -m benchmarks.test_bounds --runs 20            # runs 0..9 idle, 10..19 beside a heavy torch job
"""
from __future__ import annotations

import argparse
import ast
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "test_bounds.json"
BURNER = ("import torch\ntorch.set_num_threads(2)\na = torch.randn(768, 768)\n"
          "while True:\n    a = torch.tanh(a @ a.T / 768.0)\n")


def bound_tests() -> list[str]:
    """Node ids of the tests whose assertions go through `measured(...)`."""
    ids = []
    for p in sorted((ROOT / "tests").glob("test_*.py")):
        text = p.read_text()
        for node in ast.parse(text).body:
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
                if "measured(" in (ast.get_source_segment(text, node) or ""):
                    ids.append(f"tests/{p.name}::{node.name}")
    return ids


def plan(n: int) -> list[dict]:
    """Run i: seed i; the first half idle with 1 and 2 threads alternating, the second half beside a heavy job with 1
    thread, except its second run with 2 (two 2-thread jobs on 2 cores: measured 493 s a run against 130 s with 1)."""
    half = n // 2
    return [{"run": i, "seed": i, "threads": 1 + i % 2 if i < half or i == half + 1 else 1, "loaded": i >= half}
            for i in range(n)]


def one_run(cfg: dict, ids: list[str]) -> dict:
    """Run the bound tests once under `cfg`; returns the values every bound saw and the pass/fail outcome."""
    with tempfile.TemporaryDirectory() as d:
        log = Path(d) / "bounds.jsonl"
        env = dict(os.environ, DATAFREE_TEST_SEED=str(cfg["seed"]), DATAFREE_TEST_THREADS=str(cfg["threads"]),
                   DATAFREE_BOUNDS_LOG=str(log))
        burner = subprocess.Popen([sys.executable, "-c", BURNER]) if cfg["loaded"] else None
        t0 = time.time()
        try:
            r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *ids], cwd=ROOT,
                               env=env, capture_output=True, text=True)
        finally:
            if burner is not None:
                burner.kill()
                burner.wait()
        values: dict[str, list[float]] = {}
        if log.exists():
            for line in log.read_text().splitlines():
                rec = json.loads(line)
                values.setdefault(rec["bound"], []).append(rec["value"])
    tail = r.stdout.strip().splitlines()[-1] if r.stdout.strip() else ""
    failed = [ln.split(" ")[1] for ln in r.stdout.splitlines() if ln.startswith("FAILED ")]
    return {**cfg, "seconds": round(time.time() - t0, 1), "returncode": r.returncode, "summary": tail,
            "failed": failed, "values": values}


def summarize(runs: list[dict]) -> dict:
    """Per bound: n, min, max, mean, std over all runs (and the idle/loaded split)."""
    out: dict[str, dict] = {}
    names = sorted({k for r in runs for k in r["values"]})
    for k in names:
        vals = [v for r in runs for v in r["values"].get(k, [])]
        idle = [v for r in runs if not r["loaded"] for v in r["values"].get(k, [])]
        loaded = [v for r in runs if r["loaded"] for v in r["values"].get(k, [])]
        out[k] = {"n": len(vals), "min": round(min(vals), 4), "max": round(max(vals), 4),
                  "mean": round(statistics.mean(vals), 4), "std": round(statistics.pstdev(vals), 4),
                  "idle_range": [round(min(idle), 4), round(max(idle), 4)] if idle else None,
                  "loaded_range": [round(min(loaded), 4), round(max(loaded), 4)] if loaded else None}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--only", type=int, nargs="*", help="run just these run indices (others kept from the file)")
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--select", nargs="*", help="only the bound tests whose id contains one of these strings")
    a = ap.parse_args()
    out = Path(a.out)
    done = json.loads(out.read_text()) if out.exists() else {"runs": []}
    have = {r["run"] for r in done["runs"]}
    ids = [i for i in bound_tests() if not a.select or any(k in i for k in a.select)]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
    for cfg in plan(a.runs):
        if cfg["run"] in have or (a.only is not None and cfg["run"] not in a.only):
            continue
        r = one_run(cfg, ids)
        print(f"run {r['run']} seed {r['seed']} threads {r['threads']} loaded {r['loaded']}: {r['summary']} "
              f"({r['seconds']} s)", flush=True)
        done["runs"].append(r)
        done["runs"].sort(key=lambda x: x["run"])
        done["meta"] = {"tests": ids, "commit": commit.strip(), "machine": os.uname().machine,
                        "cpus": os.cpu_count(), "runs_planned": a.runs,
                        "command": " ".join(["python -m benchmarks.test_bounds"] + sys.argv[1:])}
        done["bounds"] = summarize(done["runs"])
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(done, indent=1))


if __name__ == "__main__":
    main()
