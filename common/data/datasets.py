"""Datasets owns the shared datasets' readers: offline digits, MNIST IDX files, CIFAR-10 batches, K-fold sets.

The offline default is scikit-learn's bundled handwritten digits (1,797 real 8x8
images); ``--data-dir`` reads the standard MNIST IDX files, plain or gzipped.
"""

from __future__ import annotations

import gzip
import importlib.util
import os
import struct
from dataclasses import dataclass

import numpy as np

from common.base.errors import UserError
from common.data.folds import fold_indices


class DataError(UserError):
    """Missing or malformed dataset files."""


@dataclass(frozen=True)
class ArrayDataset:
    """Inputs of any shape (N, ...) and their labels (N, ...) in memory, for both frameworks:
    a table (N, features), sequences (N, T, F), images (N, H, W[, C]). ``TorchBackend`` and
    ``TFBackend`` take it as it is; the model sees ``inputs[i]`` as one sample."""

    inputs: np.ndarray
    labels: np.ndarray
    name: str = "arrays"

    def __post_init__(self) -> None:
        if len(self.inputs) != len(self.labels):
            raise DataError(f"{self.name}: {len(self.inputs)} inputs but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.labels)

    def with_channel(self) -> ArrayDataset:
        """Grey images (N, H, W) as (N, H, W, 1), the layout Keras's conv layers take."""
        return ArrayDataset(self.inputs[..., None], self.labels, self.name)


def read_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled 8x8 digits: images (1797, 8, 8) with values 0..16, and labels.

    Read straight from the file scikit-learn ships (``sklearn/datasets/data/digits.csv.gz``):
    importing ``sklearn.datasets`` for :func:`sklearn.datasets.load_digits` costs about a
    second of CPU in every worker of every launch (measured 2026-12-02 on the 2-core CI
    machine), for a 1,797-row table. Falls back to ``load_digits`` where the file is not found
    (another scikit-learn layout); tests/unit/common/test_data.py checks both agree."""
    spec = importlib.util.find_spec("sklearn")
    folder = list(spec.submodule_search_locations or ()) if spec else []
    path = os.path.join(folder[0], "datasets", "data", "digits.csv.gz") if folder else ""
    if not os.path.isfile(path):
        from sklearn.datasets import load_digits

        d = load_digits()
        return d.images, d.target
    table = np.loadtxt(path, delimiter=",")
    return table[:, :-1].reshape(-1, 8, 8), table[:, -1].astype(np.int64)


def load_digits_split(val_fraction: float = 0.2, split_seed: int = 0):
    """scikit-learn's bundled 8x8 digits, split into train and validation (fixed split)."""
    raw_images, raw_labels = read_digits()
    images = (raw_images / 16.0).astype(np.float32)
    labels = raw_labels.astype(np.int64)
    order = np.random.default_rng(split_seed).permutation(len(labels))
    n_val = int(round(len(labels) * val_fraction))
    val, train = order[:n_val], order[n_val:]
    return (ArrayDataset(images[train], labels[train], "digits-train"),
            ArrayDataset(images[val], labels[val], "digits-val"))


_IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str) -> np.ndarray:
    """Read one IDX file (the MNIST format), plain or gzipped."""
    with open(path, "rb") as f:
        gzipped = f.read(2) == b"\x1f\x8b"
    opener = gzip.open if gzipped else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise DataError(f"cannot read {path!r}: {e}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
        raise DataError(f"{path!r} is not an IDX file (bad magic number)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path!r} is truncated (header)")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = np.dtype(_IDX_TYPES[raw[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - header != expected:
        raise DataError(
            f"{path!r} holds {len(raw) - header} data bytes, its header says {expected}"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)


MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "val": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def _find(data_dir: str, stem: str) -> str:
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx"),
                 stem.replace("-idx", ".idx") + ".gz"):
        path = os.path.join(data_dir, name)
        if os.path.isfile(path):
            return path
    raise DataError(f"{stem}[.gz] not found in --data-dir {data_dir!r} (MNIST IDX files expected)")


def load_mnist_idx(data_dir: str):
    """MNIST's train and test (used as validation) sets from IDX files in ``data_dir``."""
    out = []
    for split, (img_stem, lbl_stem) in MNIST_FILES.items():
        images = read_idx(_find(data_dir, img_stem))
        labels = read_idx(_find(data_dir, lbl_stem))
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise DataError(
                f"MNIST {split} files in {data_dir!r} disagree: images {images.shape}, "
                f"labels {labels.shape}"
            )
        if labels.size and (labels.min() < 0 or labels.max() > 9):
            raise DataError(f"MNIST {split} labels in {data_dir!r} are outside 0..9")
        scale = 255.0 if images.dtype == np.uint8 else 1.0
        out.append(ArrayDataset((images / scale).astype(np.float32),
                                labels.astype(np.int64), f"mnist-{split}"))
    return tuple(out)


def load_mnist_or_digits(data_dir: str | None, folds: int | None = None,
                         fold: int | None = None):
    """``--data-dir`` given: MNIST IDX files from it; otherwise the offline digits.

    With ``folds`` (``--folds K --fold I``): the training set's fold I as validation and the
    other folds as training (``common.data.folds``); the test set is not used."""
    train, val = load_mnist_idx(data_dir) if data_dir else load_digits_split()
    if folds:
        return select_fold(train, folds, fold)
    return train, val


def select_fold(data: ArrayDataset, folds: int, fold: int) -> tuple[ArrayDataset, ArrayDataset]:
    """``data`` split into K-fold fold ``fold``'s (training, validation) sets."""
    train, val = fold_indices(len(data), folds, fold)
    name = f"{data.name} fold {fold} of {folds}"
    return (ArrayDataset(data.inputs[train], data.labels[train], f"{name}: train"),
            ArrayDataset(data.inputs[val], data.labels[val], f"{name}: val"))


CIFAR10_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST_BATCH = "test_batch"


def _cifar_dir(data_dir: str) -> str:
    """The folder holding the batch files: DIR itself or DIR/cifar-10-batches-py."""
    nested = os.path.join(data_dir, "cifar-10-batches-py")
    return nested if os.path.isdir(nested) else data_dir


def read_cifar_batch(path: str) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 "python version" batch: images (N, 3, 32, 32) uint8 and labels (N,)."""
    import pickle

    try:
        with open(path, "rb") as f:
            batch = pickle.load(f, encoding="bytes")
    except FileNotFoundError:
        raise DataError(f"{path!r} not found (CIFAR-10 python batches expected: "
                        f"{', '.join(CIFAR10_TRAIN_BATCHES)}, {CIFAR10_TEST_BATCH})") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as e:
        raise DataError(f"{path!r} is not a CIFAR-10 batch file ({type(e).__name__})") from None
    if not isinstance(batch, dict):
        raise DataError(f"{path!r} is not a CIFAR-10 batch file (not a dict)")
    data = batch.get(b"data", batch.get("data"))
    labels = batch.get(b"labels", batch.get("labels"))
    if data is None or labels is None:
        raise DataError(f"{path!r} lacks 'data' or 'labels'")
    data = np.asarray(data, dtype=np.uint8)
    labels = np.asarray(labels, dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(data) != len(labels):
        raise DataError(f"{path!r}: data {data.shape} and labels {labels.shape} are not "
                        "N x 3072 and N")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise DataError(f"{path!r}: labels outside 0..9")
    return data.reshape(-1, 3, 32, 32), labels


def load_cifar10(data_dir: str):
    """CIFAR-10's five training batches and its test batch (used as validation).

    Returns ((train images, train labels), (val images, val labels)), images uint8 NCHW.
    """
    folder = _cifar_dir(data_dir)
    parts = [read_cifar_batch(os.path.join(folder, name)) for name in CIFAR10_TRAIN_BATCHES]
    train = (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
    return train, read_cifar_batch(os.path.join(folder, CIFAR10_TEST_BATCH))


def write_cifar10(data_dir: str, per_batch: int, n_test: int, seed: int = 0) -> str:
    """Generated data in CIFAR-10's "python version" layout (random pixels and labels): five
    training batches of ``per_batch`` images and a test batch of ``n_test``, in
    DIR/cifar-10-batches-py, for tests and benchmarks. Returns that folder."""
    import pickle

    rng = np.random.default_rng(seed)
    folder = os.path.join(data_dir, "cifar-10-batches-py")
    os.makedirs(folder, exist_ok=True)
    for name, n in [*((b, per_batch) for b in CIFAR10_TRAIN_BATCHES), (CIFAR10_TEST_BATCH, n_test)]:
        batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                 b"labels": rng.integers(0, 10, n).tolist(), b"batch_label": name.encode()}
        with open(os.path.join(folder, name), "wb") as f:
            pickle.dump(batch, f)
    return folder


def write_image_folders(root: str, classes: int = 3, train_per_class: int = 6,
                        val_per_class: int = 2, size: int = 40, seed: int = 0) -> None:
    """Generated data in ImageFolder's layout (``train/`` and ``val/``, a folder of random
    PNGs of size x (size + 8) pixels per class), for tests and benchmarks."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, n in (("train", train_per_class), ("val", val_per_class)):
        for c in range(classes):
            folder = os.path.join(root, split, f"class{c}")
            os.makedirs(folder)
            for i in range(n):
                pixels = rng.integers(0, 256, (size, size + 8, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(os.path.join(folder, f"{i}.png"))
