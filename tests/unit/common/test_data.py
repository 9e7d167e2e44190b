"""Tests of common/data/datasets.py: sharding (disjoint, covering, reshuffled per epoch), folds, the MNIST IDX
and CIFAR-10 readers."""

import pickle

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from common.data.datasets import (
    DataError,
    load_cifar10,
    load_digits_split,
    load_mnist_idx,
    read_digits,
    read_idx,
)
from common.data.sharding import shard_indices
from tests.support import (
    idx_bytes,
    write_cifar,
    write_mnist,
)


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_idx_round_trip(tmp_path, gz):
    files = write_mnist(tmp_path, gz=gz)
    train, val = load_mnist_idx(str(tmp_path))
    assert train.inputs.shape == (12, 28, 28) and val.inputs.shape == (5, 28, 28)
    np.testing.assert_allclose(train.inputs, files["train"][0] / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(val.labels, files["t10k"][1])
    assert train.inputs.dtype == np.float32 and train.labels.dtype == np.int64


def test_idx_other_dtype(tmp_path):
    a = np.arange(6, dtype=">i4").reshape(2, 3)
    (tmp_path / "a.idx").write_bytes(idx_bytes(a))
    np.testing.assert_array_equal(read_idx(str(tmp_path / "a.idx")), a)


def test_missing_file_is_named(tmp_path):
    write_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte"):
        load_mnist_idx(str(tmp_path))


def test_truncated_and_bad_magic(tmp_path):
    write_mnist(tmp_path)
    p = tmp_path / "train-images-idx3-ubyte"
    p.write_bytes(p.read_bytes()[:-10])
    with pytest.raises(DataError, match="header says"):
        load_mnist_idx(str(tmp_path))
    p.write_bytes(b"\x01\x02\x03\x04garbage")
    with pytest.raises(DataError, match="bad magic"):
        load_mnist_idx(str(tmp_path))


def test_mismatched_counts(tmp_path):
    write_mnist(tmp_path)
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros(3, dtype=np.uint8)))
    with pytest.raises(DataError, match="disagree"):
        load_mnist_idx(str(tmp_path))


def test_digits_split_is_fixed_and_disjoint():
    train, val = load_digits_split()
    assert len(train) + len(val) == 1797 and len(val) == 359
    train2, _ = load_digits_split()
    np.testing.assert_array_equal(train.labels, train2.labels)
    assert train.inputs.max() <= 1.0 and train.inputs.shape[1:] == (8, 8)


def test_digits_read_from_the_file_equal_scikit_learns_loader(monkeypatch):
    from sklearn.datasets import load_digits

    want = load_digits()
    images, labels = read_digits()
    np.testing.assert_array_equal(images, want.images)
    np.testing.assert_array_equal(labels, want.target)
    # Where the file is not found, the loader itself answers.
    import common.data.datasets

    monkeypatch.setattr(common.data.datasets.os.path, "isfile", lambda _path: False)
    images, labels = read_digits()
    np.testing.assert_array_equal(images, want.images)
    np.testing.assert_array_equal(labels, want.target)


@given(n=st.integers(0, 500), size=st.integers(1, 8), seed=st.integers(0, 2**31),
       epoch=st.integers(0, 100))
def test_training_shards_are_disjoint_equal_and_cover(n, size, seed, epoch):
    shards = [shard_indices(n, r, size, seed, epoch) for r in range(size)]
    assert len({len(s) for s in shards}) == 1  # equal: same steps on every rank
    flat = np.concatenate(shards)
    assert len(flat) == len(set(flat.tolist())) == n - n % size


@given(n=st.integers(0, 500), size=st.integers(1, 8))
def test_validation_shards_cover_every_sample_once(n, size):
    shards = [shard_indices(n, r, size, 0, 0, shuffle=False, drop_tail=False)
              for r in range(size)]
    assert sorted(np.concatenate(shards).tolist()) == list(range(n))


def test_reshuffled_each_epoch_same_on_every_rank():
    a0 = shard_indices(100, 0, 2, seed=1, epoch=0)
    assert not np.array_equal(a0, shard_indices(100, 0, 2, seed=1, epoch=1))
    np.testing.assert_array_equal(a0, shard_indices(100, 0, 2, seed=1, epoch=0))


@given(n=st.integers(2, 400), folds=st.integers(2, 10))
def test_folds_partition_the_data_exactly(n, folds):
    from common.data.folds import fold_indices

    if n < folds:
        return
    vals = []
    for k in range(folds):
        train, val = fold_indices(n, folds, k)
        # train is exactly the complement of the val fold
        assert sorted(np.concatenate([train, val]).tolist()) == list(range(n))
        assert not set(train.tolist()) & set(val.tolist())
        vals.append(val)
    assert sorted(np.concatenate(vals).tolist()) == list(range(n))  # disjoint and covering
    assert max(map(len, vals)) - min(map(len, vals)) <= 1


def test_folds_do_not_depend_on_the_seed_or_global_rngs():
    """Every rank, group and run cuts the same folds: nothing but (n, K, I) decides them."""
    from common.data.folds import fold_indices

    np.random.seed(1)
    first = fold_indices(1000, 5, 3)
    np.random.seed(2)
    np.random.random(10)
    again = fold_indices(1000, 5, 3)
    assert all((a == b).all() for a, b in zip(first, again, strict=True))
    assert not (fold_indices(1000, 5, 2)[1] == first[1]).all()


def test_too_few_samples_for_the_folds_is_a_user_error():
    from common.base.errors import UserError
    from common.data.folds import fold_indices

    with pytest.raises(UserError, match="--folds 5 needs at least 5 training samples"):
        fold_indices(4, 5, 0)


def test_select_fold_splits_the_training_set():
    from common.data.datasets import select_fold

    train, _ = load_digits_split()
    fit_part, val_part = select_fold(train, 4, 1)
    assert len(fit_part) + len(val_part) == len(train)
    assert abs(len(val_part) - len(train) / 4) <= 1
    assert "fold 1 of 4" in val_part.name


def test_cifar_reader_round_trip(tmp_path):
    write_cifar(tmp_path)
    (x, y), (xv, yv) = load_cifar10(str(tmp_path))
    assert x.shape == (40, 3, 32, 32) and x.dtype == np.uint8 and y.shape == (40,)
    assert xv.shape == (10, 3, 32, 32)
    with open(tmp_path / "cifar-10-batches-py" / "data_batch_1", "rb") as f:
        first = pickle.load(f)
    np.testing.assert_array_equal(x[:8].reshape(8, -1), first[b"data"])
    (tmp_path / "cifar-10-batches-py" / "test_batch").unlink()
    with pytest.raises(DataError, match="test_batch"):
        load_cifar10(str(tmp_path))
