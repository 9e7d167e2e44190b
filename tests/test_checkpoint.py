"""Tests of checkpoint files: atomic writes, keep-last-K, and finding the newest valid one."""

import os
import pickle

import pytest

from common.checkpoint import CheckpointError, CheckpointStore, atomic_write


def write_obj(obj):
    return lambda f: pickle.dump(obj, f)


def load_obj(path):
    with open(path, "rb") as f:
        return pickle.load(f)


def test_atomic_write_leaves_old_file_when_writer_fails(tmp_path):
    path = tmp_path / "x.bin"
    atomic_write(str(path), lambda f: f.write(b"old"))

    def broken(f):
        f.write(b"half of the new")
        raise RuntimeError("disk gone")

    with pytest.raises(RuntimeError):
        atomic_write(str(path), broken)
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["x.bin"]  # no temp file left behind


def test_keep_last_k(tmp_path):
    store = CheckpointStore(str(tmp_path), keep=2)
    for epoch in range(1, 6):
        store.save(epoch, epoch * 10, write_obj({"epoch": epoch}))
    refs = store.list()
    assert [(r.epoch, r.step) for r in refs] == [(4, 40), (5, 50)]
    (tmp_path / "notes.txt").write_text("not a checkpoint")  # foreign files are never touched
    store.save(6, 60, write_obj({"epoch": 6}))
    assert (tmp_path / "notes.txt").exists()
    assert [r.epoch for r in store.list()] == [5, 6]


def test_order_is_by_step_not_name(tmp_path):
    store = CheckpointStore(str(tmp_path), keep=5)
    store.save(1, 999, write_obj(1))
    store.save(2, 1000, write_obj(2))
    ref, obj, skipped = store.newest_valid(load_obj)
    assert (ref.step, obj, skipped) == (1000, 2, [])


def test_newest_valid_skips_torn_file(tmp_path):
    store = CheckpointStore(str(tmp_path), keep=5)
    store.save(1, 10, write_obj({"epoch": 1}))
    torn = store.path_for(2, 20)
    with open(torn, "wb") as f:
        f.write(pickle.dumps({"epoch": 2})[:5])
    ref, obj, skipped = store.newest_valid(load_obj)
    assert obj == {"epoch": 1} and ref.epoch == 1
    assert len(skipped) == 1 and skipped[0].startswith(os.path.basename(torn))


def test_wrong_model_error_stops_search(tmp_path):
    store = CheckpointStore(str(tmp_path), keep=5)
    store.save(1, 10, write_obj("fine"))
    store.save(2, 20, write_obj("other model"))

    def load(path):
        obj = load_obj(path)
        if obj == "other model":
            raise CheckpointError("different model")
        return obj

    with pytest.raises(CheckpointError, match="different model"):
        store.newest_valid(load)


def test_only_unreadable_files_is_an_error(tmp_path):
    store = CheckpointStore(str(tmp_path), keep=5)
    with open(store.path_for(1, 10), "wb") as f:
        f.write(b"garbage")
    with pytest.raises(CheckpointError, match="no readable checkpoint"):
        store.newest_valid(load_obj)


def test_empty_or_missing_directory(tmp_path):
    assert CheckpointStore(str(tmp_path / "nope")).newest_valid(load_obj) is None


def test_save_policy_epochs_steps_end_and_stop():
    from common.checkpoint import SavePolicy

    every_epoch = SavePolicy(every_epochs=1, every_steps=0, epochs=3)
    assert every_epoch.should_save(10, 1, epoch_complete=True)
    assert not every_epoch.should_save(5, 0, epoch_complete=False)
    assert every_epoch.should_save(5, 0, epoch_complete=False, stopping=True)
    every_other = SavePolicy(every_epochs=2, every_steps=0, epochs=3)
    assert [every_other.should_save(10 * e, e, True) for e in (1, 2, 3)] == [False, True, True]
    steps_only = SavePolicy(every_epochs=0, every_steps=4, epochs=3)
    assert steps_only.should_save(4, 0, epoch_complete=False)
    assert not steps_only.should_save(6, 0, epoch_complete=False)
    # A step checkpoint that falls on an epoch boundary is still written.
    assert steps_only.should_save(8, 1, epoch_complete=True)
    assert not steps_only.should_save(10, 1, epoch_complete=True)
    assert steps_only.should_save(30, 3, epoch_complete=True)  # the end of training
