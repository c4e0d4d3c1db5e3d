import os
from pathlib import Path

import pytest
import torch

import datafree as df

torch.set_num_threads(2)
SHARED = Path(os.environ.get("DATAFREE_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


@pytest.fixture(scope="session")
def digits_teacher(tmp_path_factory):
    """small_cnn trained on digits:train (a few seconds), saved to disk; returns (model, weights path)."""
    d = tmp_path_factory.mktemp("teacher")
    m = df.create_model("small_cnn")
    from datafree.train import train_classifier_

    train_classifier_(m, df.load_dataset("digits:train", m.input_spec), epochs=12, seed=0)
    path = d / "small_cnn.pt"
    torch.save(m.state_dict(), path)
    return df.load_model("small_cnn", str(path)), str(path)


@pytest.fixture(scope="session")
def digits_test(digits_teacher):
    return df.load_dataset("digits:test", digits_teacher[0].input_spec)


def shared_or_skip(rel: str) -> Path:
    p = SHARED / rel
    if not p.exists():
        pytest.skip(f"{p} not available (set DATAFREE_DATA)")
    return p
