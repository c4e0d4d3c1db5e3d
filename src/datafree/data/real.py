"""Real data sets (CIFAR-10, MNIST, scikit-learn digits) and the `name:split` dataset specs."""
from __future__ import annotations

import gzip
import os
import pickle
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from ..core.errors import DatafreeError
from ..models.spec import InputSpec
from .base import TensorData, images_to_tensor

DATA_ENV = "DATAFREE_DATA"

# spec -> npz file(s) under the data root, concatenated in order
_NPZ = {
    "cifar10:test-exact": ("cifar10/cifar10_test_exact1000.npz",),
    "cifar10:train-exact": ("cifar10/cifar10_train_exact4000.npz",),
    "cifar10:test-jpeg": ("cifar10/cifar10_test_jpeg.npz",),
    "cifar10:train-jpeg": ("cifar10/cifar10_train_jpeg_part0.npz", "cifar10/cifar10_train_jpeg_part1.npz"),
}
DATASET_SPECS: dict[str, str] = {
    "cifar10:test-exact": "CIFAR-10 test images 0..999, pixel-exact (npz)",
    "cifar10:train-exact": "CIFAR-10 train images 0..3999, pixel-exact (npz)",
    "cifar10:test-jpeg": "all 10k CIFAR-10 test images from JPEG copies (lossy, npz)",
    "cifar10:train-jpeg": "all 50k CIFAR-10 train images from JPEG copies (lossy, npz)",
    "cifar10:test": "CIFAR-10 test_batch from a standard cifar-10-batches-py folder",
    "cifar10:train": "CIFAR-10 data_batch_1..5 from a standard cifar-10-batches-py folder",
    "mnist:train": "MNIST 60k train (mnist/mnist_train.npz or idx files)",
    "mnist:test": "MNIST 10k test (mnist/mnist_test.npz or idx files)",
    "digits:train": "scikit-learn 8x8 digits, fixed 80% split (no files needed)",
    "digits:test": "scikit-learn 8x8 digits, fixed 20% split (no files needed)",
    "imagenet:val1300": "1300 real ILSVRC2012 validation images, 725 classes (imagenet/val1300/, evaluation)",
    "imagenet:sample1000": "1000 ImageNet images, one per class (imagenet/sample1000/, 'the real data a user has')",
    "folder:PATH": "a folder of images with one subfolder per class (sorted names = labels 0..K-1)",
}
_LABELLED = {"imagenet:val1300": ("imagenet/val1300", "imagenet/val1300_labels.csv"),
             "imagenet:sample1000": ("imagenet/sample1000", "imagenet/sample1000_labels.csv")}
IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def load_folder(path: str, input_spec: InputSpec) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images (resized to the spec, RGB or grayscale) and labels from class subfolders."""
    root = Path(path)
    if not root.is_dir():
        raise DatafreeError(f"image folder {path!r} not found; give folder:PATH with one subfolder per class")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir())
    if not classes:
        raise DatafreeError(f"{path!r} has no class subfolders; put images in {path}/<class>/*.png")
    c, h, w = input_spec.shape
    mode = "L" if c == 1 else "RGB"
    xs, ys = [], []
    for label, cls in enumerate(classes):
        for f in sorted((root / cls).iterdir()):
            if f.suffix.lower() not in IMAGE_EXTS:
                continue
            xs.append(_read_image(f, mode, (w, h)))
            ys.append(label)
    if not xs:
        raise DatafreeError(f"no images ({', '.join(sorted(IMAGE_EXTS))}) under {path!r}")
    return np.stack(xs), np.asarray(ys, dtype=np.int64)


def _read_image(f: Path, mode: str, size: tuple[int, int]) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(f) as im:
            return np.asarray(im.convert(mode).resize(size, Image.BILINEAR), dtype=np.uint8)
    except (OSError, UnidentifiedImageError) as e:
        raise DatafreeError(f"cannot read image {f}: {e}") from None


def load_labelled_folder(folder: Path, labels_csv: Path, input_spec: InputSpec) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images resized to the spec (one bilinear resize, as the shared ImageNet sets expect) and labels from a
    `file,label` CSV."""
    import csv

    if not labels_csv.is_file() or not folder.is_dir():
        raise DatafreeError(f"{folder} with {labels_csv.name} not found; point --data-root or {DATA_ENV} at the folder "
                            "holding imagenet/")
    c, h, w = input_spec.shape
    with open(labels_csv, newline="") as fh:
        rows = [r for r in csv.DictReader(fh)]
    if not rows or not {"file", "label"} <= set(rows[0]):
        raise DatafreeError(f"{labels_csv} must be a CSV with columns file,label")
    xs = [_read_image(folder / r["file"], "L" if c == 1 else "RGB", (w, h)) for r in rows]
    return np.stack(xs), np.asarray([int(r["label"]) for r in rows], dtype=np.int64)


def class_names(spec: str, root: Optional[str] = None) -> list[str]:
    """Human-readable class names of a dataset spec, index = label (ImageNet: imagenet/synsets.txt; else numbers)."""
    if spec.startswith("imagenet:"):
        f = _find(data_root(root), "imagenet/synsets.txt")
        return [ln.split(" ", 1)[1].split(",")[0].strip() for ln in f.read_text().splitlines() if ln.strip()]
    if spec.startswith("cifar10:"):
        return ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    return [str(i) for i in range(10)]


def data_root(root: Optional[str] = None) -> Path:
    """The data root: the argument, else $DATAFREE_DATA."""
    r = root or os.environ.get(DATA_ENV)
    if not r:
        raise DatafreeError(f"no data root: pass --data-root DIR or set {DATA_ENV}=DIR")
    p = Path(r)
    if not p.is_dir():
        raise DatafreeError(f"data root {str(p)!r} is not a directory; fix --data-root or {DATA_ENV}")
    return p


def _find(root: Path, rel: str) -> Path:
    for cand in (root / rel, root / Path(rel).name):
        if cand.is_file():
            return cand
    raise DatafreeError(f"{rel} not found under data root {str(root)!r}; point --data-root or {DATA_ENV} at the folder holding it")


def _load_npz(paths: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for p in paths:
        try:
            with np.load(p) as d:
                xs.append(d["images"])
                ys.append(d["labels"])
        except (OSError, KeyError, ValueError, EOFError) as e:
            raise DatafreeError(f"{p} is not a valid dataset npz (needs 'images' and 'labels'): {e}") from None
    return np.concatenate(xs), np.concatenate(ys).astype(np.int64)


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler for CIFAR python batches that refuses anything but numpy arrays and builtins."""

    _ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "_reconstruct"),
                ("numpy._core.multiarray", "_reconstruct")}

    def find_class(self, module: str, name: str):  # noqa: D401
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR batch file")


def _load_cifar_batches(root: Path, train: bool) -> tuple[np.ndarray, np.ndarray]:
    folder = next((d for d in (root / "cifar-10-batches-py", root) if (d / "test_batch").is_file()), None)
    if folder is None:
        raise DatafreeError(f"no cifar-10-batches-py folder (with test_batch) under {str(root)!r}; point --data-root at its parent")
    names = [f"data_batch_{i}" for i in range(1, 6)] if train else ["test_batch"]
    xs, ys = [], []
    for n in names:
        try:
            with open(folder / n, "rb") as f:
                d = _NumpyOnlyUnpickler(f, encoding="bytes").load()
            xs.append(np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
            ys.append(np.asarray(d[b"labels"], dtype=np.int64))
        except (OSError, KeyError, pickle.UnpicklingError, EOFError, ValueError) as e:
            raise DatafreeError(f"{folder / n} is not a valid CIFAR-10 python batch: {e}") from None
    return np.concatenate(xs), np.concatenate(ys)


def _read_idx(path: Path) -> np.ndarray:
    opener: Callable = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _load_mnist(root: Path, train: bool) -> tuple[np.ndarray, np.ndarray]:
    split = "train" if train else "test"
    for cand in (root / "mnist" / f"mnist_{split}.npz", root / f"mnist_{split}.npz"):
        if cand.is_file():
            return _load_npz([cand])
    stem = "train" if train else "t10k"
    for folder in (root, root / "mnist", root / "MNIST" / "raw"):
        for ext in ("", ".gz"):
            img, lab = folder / f"{stem}-images-idx3-ubyte{ext}", folder / f"{stem}-labels-idx1-ubyte{ext}"
            if img.is_file() and lab.is_file():
                return _read_idx(img), _read_idx(lab).astype(np.int64)
    raise DatafreeError(f"MNIST {split} not found under {str(root)!r} (mnist/mnist_{split}.npz or {stem}-*-idx*-ubyte files)")


def _load_digits(train: bool) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    images = np.clip(d.images * (255.0 / 16.0), 0, 255).round().astype(np.uint8)
    perm = np.random.RandomState(0).permutation(len(images))
    cut = int(0.8 * len(images))
    idx = perm[:cut] if train else perm[cut:]
    return images[idx], d.target[idx].astype(np.int64)


def load_raw(spec: str, root: Optional[str] = None) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images and int64 labels for a dataset spec such as `cifar10:test-exact`."""
    if spec not in DATASET_SPECS or spec == "folder:PATH":
        raise DatafreeError(f"unknown dataset spec {spec!r}; valid: {', '.join(DATASET_SPECS)}")
    if spec in _NPZ:
        r = data_root(root)
        return _load_npz([_find(r, rel) for rel in _NPZ[spec]])
    if spec in _LABELLED:
        raise DatafreeError(f"{spec} holds images of different sizes; load it for a model with load_dataset")
    name, split = spec.split(":")
    if name == "digits":
        return _load_digits(split == "train")
    if name == "mnist":
        return _load_mnist(data_root(root), split == "train")
    return _load_cifar_batches(data_root(root), split == "train")


def load_dataset(spec: str, input_spec: InputSpec, root: Optional[str] = None) -> TensorData:
    """A real dataset as TensorData normalized for a model's input spec."""
    if spec.startswith("folder:"):
        images, labels = load_folder(spec[len("folder:"):], input_spec)
    elif spec in _LABELLED:
        r = data_root(root)
        images, labels = load_labelled_folder(r / _LABELLED[spec][0], r / _LABELLED[spec][1], input_spec)
    else:
        images, labels = load_raw(spec, root)
    return TensorData(images_to_tensor(images, input_spec), torch.from_numpy(labels), name=spec)


def is_dataset_spec(s: str) -> bool:
    """True if `s` names a known dataset spec."""
    return s in DATASET_SPECS or s.startswith("folder:")
