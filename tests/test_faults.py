"""kill -9 in the middle of real CLI runs (synthesis, distillation from a fixed set, from rounds and from a generator,
pruning), then the same command again: the result is byte-identical to an uninterrupted run, and no temporary file
is left behind."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

EXE = Path(sys.executable).parent / "datafree"
M = ["small_cnn", "--weights", "{w}"]
KD = ["--student", "small_cnn", "--seed", "5"]
CASES = {
    "synthesize": (["synthesize", *M, "--method", "bn-stats", "--num", "96", "--batch-size", "8", "--iterations", "40",
                    "--out", "{o}"], "shards"),
    "distill-set": (["distill", *M, *KD, "--data", "digits:train", "--steps", "250", "--checkpoint-every", "25",
                     "--out", "{o}"], "ckpt"),
    "distill-rounds": (["distill", *M, *KD, "--method", "adaptive-deepinversion", "--iterations", "6", "--rounds", "5",
                        "--per-round", "16", "--steps-per-round", "12", "--checkpoint-every", "6", "--out", "{o}"], "ckpt"),
    "distill-generator": (["distill", *M, *KD, "--method", "fast", "--iterations", "3", "--rounds", "6", "--per-round",
                           "16", "--steps-per-round", "10", "--checkpoint-every", "5", "--out", "{o}"], "ckpt"),
    "prune": (["prune", *M, "--structured", "--sparsity", "0.5", "--data", "digits:train", "--finetune-steps", "500",
               "--out", "{o}"], "ckpt"),
}


def _cmd(case: str, w: str, o: Path) -> list[str]:
    exe = [str(EXE)] if EXE.exists() else [sys.executable, "-m", "datafree"]
    return exe + [a.format(w=w, o=str(o)) for a in CASES[case][0]] + ["--no-progress", "--threads", "1"]


def _result(case: str, o: Path) -> dict:
    if case == "synthesize":
        out = {}
        for f in sorted(o.glob("shard_*.npz")):
            with np.load(f) as z:
                out.update({f"{f.name}/{k}": torch.from_numpy(z[k].copy()) for k in z.files})
        return out
    sd = torch.load(o, map_location="cpu", weights_only=True)["state_dict"]
    return {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}


@pytest.mark.parametrize("case", list(CASES))
def test_kill_9_then_rerun_gives_the_uninterrupted_bytes(case, digits_teacher, tmp_path):
    w = digits_teacher[1]
    ref = tmp_path / ("ref" if case == "synthesize" else "ref.pt")
    r = subprocess.run(_cmd(case, w, ref), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr

    out = tmp_path / ("cut" if case == "synthesize" else "cut.pt")
    ck = Path(str(out) + ".ckpt") / "state.pt"
    ready = (lambda: len(list(out.glob("shard_*.npz"))) >= 3) if CASES[case][1] == "shards" else ck.exists
    p = subprocess.Popen(_cmd(case, w, out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True)
    t0 = time.time()
    while not ready():
        assert p.poll() is None, "the run finished before it could be killed; give it more work"
        assert time.time() - t0 < 120
        time.sleep(0.01)
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    if case == "synthesize":
        assert len(list(out.glob("shard_*.npz"))) < 12
    else:
        assert not out.exists()
        done = torch.load(ck, weights_only=True)["distiller"]["step"]
        assert done > 0

    r = subprocess.run(_cmd(case, w, out), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    a, b = _result(case, ref), _result(case, out)
    assert a.keys() == b.keys() and a
    for k in a:
        assert torch.equal(a[k], b[k]), f"{case}: {k} differs from the uninterrupted run"
    assert not [p for p in tmp_path.rglob("*") if ".tmp" in p.name]
