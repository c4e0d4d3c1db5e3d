import gzip
import pickle

import numpy as np
import pytest
import torch

import datafree as df
from datafree.data import images_to_tensor, load_raw
from datafree.models import CIFAR10_SPEC, MNIST_SPEC


def test_normalization_matches_manual():
    img = np.arange(2 * 4 * 4 * 3, dtype=np.uint8).reshape(2, 4, 4, 3)
    spec = df.InputSpec((3, 4, 4), (0.1, 0.2, 0.3), (0.5, 0.25, 2.0), 10)
    x = images_to_tensor(img, spec)
    expect = (torch.from_numpy(img).permute(0, 3, 1, 2).float() / 255 - torch.tensor([0.1, 0.2, 0.3]).view(1, 3, 1, 1)) / torch.tensor([0.5, 0.25, 2.0]).view(1, 3, 1, 1)
    torch.testing.assert_close(x, expect)
    torch.testing.assert_close(spec.denormalize(x), torch.from_numpy(img).permute(0, 3, 1, 2).float() / 255)


def test_cifar_python_batches_folder(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.RandomState(0)
    for name, n in [("test_batch", 5)] + [(f"data_batch_{i}", 2) for i in range(1, 6)]:
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": rng.randint(0, 256, (n, 3072), dtype=np.uint8), b"labels": list(range(n))}, f)
    x, y = load_raw("cifar10:test", str(tmp_path))
    assert x.shape == (5, 32, 32, 3) and y.tolist() == [0, 1, 2, 3, 4]
    with open(folder / "test_batch", "rb") as f:
        raw = pickle.load(f, encoding="bytes")[b"data"]
    assert np.array_equal(x[1, :, :, 0].ravel(), raw[1, :1024])  # red plane first, HWC after transpose
    xt, _ = load_raw("cifar10:train", str(tmp_path))
    assert xt.shape == (10, 32, 32, 3)


def test_cifar_batch_with_foreign_objects_is_refused(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({b"data": __import__("collections").OrderedDict()}, f)
    with pytest.raises(df.DatafreeError, match="not a valid CIFAR-10"):
        load_raw("cifar10:test", str(tmp_path))


def test_mnist_idx_files(tmp_path):
    imgs = np.random.RandomState(0).randint(0, 256, (3, 28, 28), dtype=np.uint8)
    labs = np.array([7, 2, 1], dtype=np.uint8)
    with gzip.open(tmp_path / "t10k-images-idx3-ubyte.gz", "wb") as f:
        f.write(bytes([0, 0, 8, 3]) + (3).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2 + imgs.tobytes())
    with gzip.open(tmp_path / "t10k-labels-idx1-ubyte.gz", "wb") as f:
        f.write(bytes([0, 0, 8, 1]) + (3).to_bytes(4, "big") + labs.tobytes())
    d = df.load_dataset("mnist:test", MNIST_SPEC, str(tmp_path))
    assert d.x.shape == (3, 1, 28, 28) and d.y.tolist() == [7, 2, 1]
    # resized, 3-channel view for a CIFAR model
    d3 = df.load_dataset("mnist:test", CIFAR10_SPEC, str(tmp_path))
    assert d3.x.shape == (3, 3, 32, 32)


def test_digits_split_is_fixed_and_disjoint():
    tr, yt = load_raw("digits:train")
    te, ye = load_raw("digits:test")
    assert len(tr) + len(te) == 1797 and tr.shape[1:] == (8, 8) and tr.max() == 255
    assert np.array_equal(load_raw("digits:test")[0], te)


def test_missing_root_and_unknown_spec(monkeypatch, tmp_path):
    monkeypatch.delenv("DATAFREE_DATA", raising=False)
    with pytest.raises(df.DatafreeError, match="--data-root"):
        load_raw("cifar10:test-exact")
    with pytest.raises(df.DatafreeError, match="not found under data root"):
        load_raw("cifar10:test-exact", str(tmp_path))
    with pytest.raises(df.DatafreeError, match="unknown dataset spec"):
        load_raw("cifar100:test")


def test_image_folder(tmp_path):
    from PIL import Image

    rng = np.random.RandomState(0)
    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        for i in range(3):
            Image.fromarray(rng.randint(0, 256, (40, 40, 3), dtype=np.uint8)).save(tmp_path / cls / f"{i}.png")
    (tmp_path / "dog" / "notes.txt").write_text("ignored")
    d = df.load_dataset(f"folder:{tmp_path}", CIFAR10_SPEC)
    assert d.x.shape == (6, 3, 32, 32) and d.y.tolist() == [0, 0, 0, 1, 1, 1]
    g = df.load_dataset(f"folder:{tmp_path}", MNIST_SPEC)
    assert g.x.shape == (6, 1, 28, 28)
    with pytest.raises(df.DatafreeError, match="no class subfolders"):
        df.load_dataset(f"folder:{tmp_path / 'cat'}", CIFAR10_SPEC)


def test_concat_data_keeps_order_and_drops_partial_fields():
    from datafree.data import TensorData, concat_data

    a = TensorData(torch.arange(6.0).view(3, 2), torch.tensor([0, 1, 2]), torch.ones(3, 4), "a")
    b = TensorData(torch.arange(6.0, 10.0).view(2, 2), torch.tensor([3, 4]), None, "b")
    c = concat_data([a, b], "ab")
    assert c.name == "ab" and len(c) == 5
    assert torch.equal(c.x, torch.arange(10.0).view(5, 2))
    assert c.y.tolist() == [0, 1, 2, 3, 4]
    assert c.logits is None  # b has none, so a mixed tensor would be wrong
    assert torch.equal(concat_data([a, a]).logits, torch.ones(6, 4))
