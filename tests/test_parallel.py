"""Scale-out on torchrun with 2 CPU processes (gloo): the same set and the same training as one process, kill -9 and
resume with another world size, rank 0 alone reports."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import measured

BIN = Path(sys.executable).parent


def _datafree() -> list[str]:
    script = BIN / "datafree"
    return [str(script)] if script.exists() else [sys.executable, "-m", "datafree"]


def torchrun(args: list, n: int = 2, **kw) -> subprocess.Popen:
    """The README's line: torchrun --nproc_per_node N --no-python datafree -- SUBCOMMAND ... (standalone rendezvous so
    two test runs never share a port)."""
    exe = _datafree()
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}"]
    cmd = launcher + (["--no-python", exe[0]] if len(exe) == 1 else ["-m", "datafree"]) + ["--"] + [str(a) for a in args]
    # a rank that dies by a signal prints every thread's Python stack (and torch its C++ one) into the failure message
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONFAULTHANDLER="1", TORCH_SHOW_CPP_STACKTRACES="1")
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True, **kw)


def single(args: list) -> subprocess.CompletedProcess:
    return subprocess.run(_datafree() + [str(a) for a in args] + ["--threads", "1"], capture_output=True, text=True)


def finish(p: subprocess.Popen, timeout: float = 240) -> tuple[str, str]:
    out, err = p.communicate(timeout=timeout)
    assert p.returncode == 0, err[-6000:]
    return out, err


def kill_when(p: subprocess.Popen, ready, timeout: float = 120) -> None:
    """kill -9 the whole launcher group as soon as `ready()` holds (or fail if the run ends first)."""
    t0 = time.time()
    while not ready():
        assert p.poll() is None, "the run finished before it could be interrupted; give it more work"
        assert time.time() - t0 < timeout
        time.sleep(0.02)
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()


def arrays(d: Path) -> dict:
    out = {}
    for f in sorted(d.glob("shard_*.npz")):
        with np.load(f) as z:
            out[f.name] = {k: z[k].copy() for k in z.files}
    return out


def weights(path) -> dict:
    obj = torch.load(path, map_location="cpu", weights_only=True)
    return {k: v for k, v in obj["state_dict"].items() if isinstance(v, torch.Tensor)}


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a if a[k].numel())


@pytest.fixture(scope="module")
def teacher_w(digits_teacher):
    return digits_teacher[1]


SYN = ["synthesize", "small_cnn", "--method", "bn-stats", "--num", "96", "--batch-size", "8", "--iterations", "40",
       "--seed", "4", "--no-progress"]


def test_synthesis_split_across_ranks_is_the_same_set_and_resumes_with_any_world_size(teacher_w, tmp_path):
    ref = tmp_path / "one"
    r = single(SYN + ["--weights", teacher_w, "--out", ref])
    assert r.returncode == 0, r.stderr
    two = tmp_path / "two"
    finish(torchrun(SYN + ["--weights", teacher_w, "--out", two, "--json"]))
    man = json.loads((two / "manifest.json").read_text())
    assert man["complete"] and man["world_size"] == 2 and len(man["shard_stats"]) == 12  # followers' stats merged
    a, b = arrays(ref), arrays(two)
    assert a.keys() == b.keys() and len(a) == 12
    for k in a:
        for arr in ("x", "y", "logits"):
            assert np.array_equal(a[k][arr], b[k][arr]), (k, arr)

    # kill -9 a 2-rank run part-way, then finish it with one process: the same bytes again
    cut = tmp_path / "cut"
    p = torchrun(SYN + ["--weights", teacher_w, "--out", cut])
    kill_when(p, lambda: len(list(cut.glob("shard_*.npz"))) >= 3)
    assert not json.loads((cut / "manifest.json").read_text())["complete"]
    assert 3 <= len(list(cut.glob("shard_*.npz"))) < 12  # a kill can land inside a write: a temporary may remain
    r = single(SYN + ["--weights", teacher_w, "--out", cut])
    assert r.returncode == 0, r.stderr
    assert not list(cut.glob("*.tmp*"))  # ... and the resumed run removes it
    c = arrays(cut)
    assert c.keys() == a.keys() and all(np.array_equal(a[k]["x"], c[k]["x"]) for k in a)
    assert json.loads((cut / "manifest.json").read_text())["world_size"] == 1


DIS = ["distill", "small_cnn", "--student", "small_cnn", "--data", "digits:train", "--kd-batch-size", "32",
       "--kd-lr", "3e-4", "--freeze-bn", "--no-progress", "--val", "digits:test", "--val-every", "50", "--seed", "1"]


def test_ddp_distill_trains_like_one_process_and_rank0_alone_reports(teacher_w, tmp_path):
    """With BN statistics frozen (a pretrained student), 2 ranks x half a batch give the full batch's mean gradient:
    the same weights as one process."""
    args = DIS + ["--weights", teacher_w, "--student-weights", teacher_w, "--steps", "60", "--json"]
    r = single(args + ["--out", tmp_path / "one.pt"])
    assert r.returncode == 0, r.stderr
    out, _ = finish(torchrun(args + ["--out", tmp_path / "two.pt"]))
    lines = [ln for ln in out.splitlines() if ln.startswith("{")]
    assert len(lines) == 1, out  # one report for the job, not one per rank
    info = json.loads(lines[0])
    assert info["steps"] == 60 and measured("ddp.val_top1", info["val_top1"]) > 80.0, info["val_top1"]  # measured in test_bounds.json, 20 runs: 97.2..98.9
    assert max_diff(weights(tmp_path / "one.pt"), weights(tmp_path / "two.pt")) < 1e-4


def test_ddp_distill_killed_resumes_with_one_process_to_the_uninterrupted_weights(teacher_w, tmp_path):
    args = DIS + ["--weights", teacher_w, "--student-weights", teacher_w, "--steps", "600", "--checkpoint-every", "40"]
    r = single(args + ["--out", tmp_path / "ref.pt"])
    assert r.returncode == 0, r.stderr
    ck = tmp_path / "run.ckpt"
    p = torchrun(args + ["--out", tmp_path / "cut.pt", "--checkpoint-dir", ck])
    kill_when(p, lambda: (ck / "state.pt").exists())
    step = torch.load(ck / "state.pt", weights_only=True)["distiller"]["step"]
    assert 0 < step < 600 and not (tmp_path / "cut.pt").exists()
    r = single(args + ["--out", tmp_path / "cut.pt", "--checkpoint-dir", ck])
    assert r.returncode == 0, r.stderr
    assert max_diff(weights(tmp_path / "ref.pt"), weights(tmp_path / "cut.pt")) < 1e-3


def test_ddp_generator_source_stays_in_step_and_prune_quantize_train_under_torchrun(teacher_w, tmp_path):
    # a generator source advanced on every rank: Distiller checks the ranks' source states agree after each piece
    out, _ = finish(torchrun(["distill", "small_cnn", "--weights", teacher_w, "--student", "small_cnn", "--method",
                              "fast", "--iterations", "2", "--per-round", "16", "--steps", "12", "--checkpoint-every",
                              "4", "--no-progress", "--json", "--out", tmp_path / "g.pt"]))
    assert json.loads(out.splitlines()[-1])["steps"] == 12
    for name, cmd in [("prune", ["prune", "--structured", "--sparsity", "0.5", "--data", "digits:train",
                                 "--finetune-steps", "20", "--freeze-bn"]),
                      ("quantize", ["quantize", "--calib", "digits:train", "--w-bits", "4", "--a-bits", "4",
                                    "--finetune-steps", "20"])]:
        args = [cmd[0], "small_cnn", "--weights", teacher_w, *cmd[1:], "--no-progress", "--seed", "2"]
        r = single(args + ["--out", tmp_path / f"{name}1.pt"])
        assert r.returncode == 0, r.stderr
        finish(torchrun(args + ["--out", tmp_path / f"{name}2.pt"]))
        assert max_diff(weights(tmp_path / f"{name}1.pt"), weights(tmp_path / f"{name}2.pt")) < 1e-3, name
