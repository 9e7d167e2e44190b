"""Tests of checkpoint files: atomic writes, keep-last-K, and finding the newest valid one."""

import os
import pickle

import numpy as np
import pytest

from common.base.files import (
    CHECKSUM_KEY,
    CheckpointError,
    CorruptCheckpoint,
    atomic_write,
    content_digest,
    current_umask,
    verified,
    with_checksum,
)
from common.checkpoint.store import CheckpointStore


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


def test_keep_last_k_vouched_for_and_the_newest(tmp_path):
    """Each save's check vouched for every older checkpoint, not for the one it writes: keep-2
    keeps the two newest older ones and the new one."""
    store = CheckpointStore(str(tmp_path), keep=2)
    for epoch in range(1, 6):
        store.save(epoch, epoch * 10, write_obj({"epoch": epoch}))
    refs = store.list()
    assert [(r.epoch, r.step) for r in refs] == [(3, 30), (4, 40), (5, 50)]
    (tmp_path / "notes.txt").write_text("not a checkpoint")  # foreign files are never touched
    store.save(6, 60, write_obj({"epoch": 6}))
    assert (tmp_path / "notes.txt").exists()
    assert [r.epoch for r in store.list()] == [4, 5, 6]


def test_checkpoints_are_ordered_by_epoch_then_step(tmp_path):
    """A world change renumbers steps: epoch 4 on 3 workers ends at step 236, epoch 3 on 2
    ended at 267. The newer one is the one resumed from and kept (before: step order)."""
    store = CheckpointStore(str(tmp_path), keep=1)
    store.save(2, 178, write_obj("epoch 2"))
    store.save(3, 267, write_obj("epoch 3"))
    store.save(4, 236, write_obj("epoch 4"))
    assert [(r.epoch, r.step) for r in store.list()] == [(3, 267), (4, 236)]
    assert store.newest_valid(load_obj)[1] == "epoch 4"


def test_a_folder_too_small_for_keep_k_is_said_at_the_first_save_with_the_fix(tmp_path,
                                                                             monkeypatch):
    """Room for 3.5 checkpoints of 1 MB (the fault battery's case: every rerun failed at the
    same later save, with no hint): keep-3 needs 5 (3 kept, the newest until the next save
    vouches for it, the next while it is written)."""
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    free = {"now": 2_500_000}
    monkeypatch.setattr(shutil, "disk_usage", lambda _: usage(0, 0, free["now"]))
    store = CheckpointStore(str(tmp_path), keep=3)
    path = store.save(1, 10, lambda f: f.write(b"x" * 1_000_000))
    warning = store.room(path)  # 2.5 MB free + 1 MB of its own: room for 3.5
    assert warning == (f"warning: --keep-checkpoints 3 needs room for 5 checkpoints of 1.0 MB here "
                       f"(the kept ones, the newest until the next save vouches for it, and the "
                       f"next while it is written): 5.0 MB, but {tmp_path} has 3.5 MB for them "
                       "(2.5 MB free); a later save will fail with a full disk. Free space there, "
                       "use another --checkpoint-dir, or lower --keep-checkpoints to 1")
    free["now"] = 4_000_000  # 5 MB with its own: enough
    assert store.room(path) is None
    free["now"] = 1_500_000  # 2.5 MB: not even one kept beside the other two
    assert store.room(path).endswith("or no smaller --keep-checkpoints fits")


def test_order_is_by_step_not_name(tmp_path):
    store = CheckpointStore(str(tmp_path), keep=5)
    store.save(1, 999, write_obj(1))
    store.save(2, 1000, write_obj(2))
    ref, obj, skipped = store.newest_valid(load_obj)
    assert (ref.step, obj, skipped) == (1000, 2, [])


def test_newest_valid_skips_torn_file_and_moves_it_aside(tmp_path):
    store = CheckpointStore(str(tmp_path), keep=2)
    store.save(1, 10, write_obj({"epoch": 1}))
    torn = store.path_for(2, 20)
    with open(torn, "wb") as f:
        f.write(pickle.dumps({"epoch": 2})[:5])
    ref, obj, skipped = store.newest_valid(load_obj)
    assert obj == {"epoch": 1} and ref.epoch == 1
    assert len(skipped) == 1 and skipped[0].startswith(os.path.basename(torn))
    assert os.path.exists(torn + ".corrupt") and not os.path.exists(torn)
    # Aside, it no longer counts toward keep-K: the good checkpoint survives two more saves.
    store.save(2, 20, write_obj({"epoch": 2}))
    assert [r.step for r in store.list()] == [10, 20]


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
    from common.checkpoint.policy import SavePolicy

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


def test_one_writer_per_directory_and_leftovers_removed(tmp_path):
    (tmp_path / ".tmp-abc123").write_bytes(b"half a checkpoint")
    first = CheckpointStore(str(tmp_path))
    notices = first.lock()
    assert notices == [f"removed 1 temporary file(s) left by an interrupted write in "
                       f"{str(tmp_path)!r}"]
    assert not (tmp_path / ".tmp-abc123").exists()
    with pytest.raises(CheckpointError, match=rf"is in use by another job \(pid {os.getpid()} on "):
        CheckpointStore(str(tmp_path)).lock()
    first._lock_file.close()  # the holder ends: the directory is free again
    assert CheckpointStore(str(tmp_path)).lock() == []


def test_unwritable_directory_is_a_one_line_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(CheckpointError, match="cannot use --checkpoint-dir"):
        CheckpointStore(str(blocker / "ckpt")).lock()


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)],
                         ids=["022", "027", "002"])
def test_files_get_the_umask_at_write_time_not_0600(tmp_path, umask, mode):
    """The file's mode follows the umask in force when it is written (mkstemp alone gives 0600);
    set after the module was imported, so a umask captured at import would fail here."""
    old = os.umask(umask)
    try:
        path = tmp_path / "x.bin"
        atomic_write(str(path), lambda f: f.write(b"x"))
        assert current_umask() == umask
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == mode


def test_a_serialiser_error_on_write_is_a_checkpoint_error_and_keeps_the_rest(tmp_path):
    store = CheckpointStore(str(tmp_path), keep=2)
    store.save(1, 10, write_obj(1))

    def broken(f):
        f.write(b"part")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64")

    with pytest.raises(CheckpointError, match="cannot write checkpoint .*RuntimeError.*kept"):
        store.save(2, 20, broken)
    assert [r.step for r in store.list()] == [10]
    assert sorted(os.listdir(tmp_path)) == [os.path.basename(store.path_for(1, 10))]


def _payload():
    import torch

    return {"format": "x", "step": 7, "rng": (3, [1, 2], None), "config": {"base_lr": 0.1},
            "model": {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3),
                      "b": torch.zeros(3, dtype=torch.bfloat16)},
            "arrays": [np.ones(4, np.float64)]}


def test_checksum_round_trips_through_a_torch_file(tmp_path):
    import torch

    path = tmp_path / "c.pt"
    torch.save(with_checksum(_payload()), path)
    back = verified(torch.load(path, weights_only=False))
    assert CHECKSUM_KEY not in back and back["step"] == 7
    assert content_digest(back) == content_digest(_payload())


def test_a_silently_changed_value_fails_the_checksum_and_is_skipped(tmp_path):
    import torch

    store = CheckpointStore(str(tmp_path), keep=3)
    for step in (10, 20):
        payload = with_checksum({**_payload(), "step": step})
        store.save(0, step, lambda f, p=payload: torch.save(p, f))
    newest = store.list()[-1].path
    bad = torch.load(newest, weights_only=False)
    bad["model"]["w"][1, 2] += 1e-6  # one weight changed; the stored checksum is the old one
    torch.save(bad, newest)
    with pytest.raises(CorruptCheckpoint, match="does not match its checksum"):
        verified(torch.load(newest, weights_only=False))
    ref, loaded, skipped = store.newest_valid(
        lambda p: verified(torch.load(p, weights_only=False)))
    assert loaded["step"] == 10
    assert skipped == ["ckpt-e00000-s000000020.pt (its content does not match its checksum; "
                       "moved to ckpt-e00000-s000000020.pt.corrupt)"]
    assert os.path.exists(newest + ".corrupt") and not os.path.exists(newest)


def test_checksum_tells_lists_from_values_and_keys_apart():
    assert content_digest({"a": [1, 2]}) == content_digest({"a": (1, 2)})
    assert content_digest({"a": [1, 2]}) != content_digest({"a": [12]})
    assert content_digest({"a": 1}) != content_digest({"b": 1})
    assert content_digest(np.zeros(2, np.float32)) != content_digest(np.zeros(2, np.float64))
    assert verified({"x": 1}) == {"x": 1}  # a file from before checksums loads as it is
