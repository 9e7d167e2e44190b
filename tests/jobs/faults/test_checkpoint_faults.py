"""Faults around the checkpoint folder of a real job: a second job on it, a full disk, a silently
corrupted newest file, rank 0 killed while its background write is in flight."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import time

import pytest

from common.data.datasets import write_image_folders
from tests.support import (
    BIN,
    FAULT_FLAGS,
    HANG_GUARD_S,
    MNIST,
    RECIPES,
    Faulty,
    checkpoint_steps,
    final_record,
    horovodrun,
    job_env,
    load_checkpoint,
    max_abs_diff,
    rerun_matches,
    worker_errors,
)


def test_a_second_job_on_the_same_checkpoint_directory_stops_at_start(tmp_path):
    ckpt = tmp_path / "ckpt"
    first = subprocess.Popen([str(BIN / "python"), str(MNIST), "--epochs", "1000",
                              "--checkpoint-dir", str(ckpt), "--metrics-file",
                              str(tmp_path / "first.jsonl"), "--no-progress"],
                             cwd=tmp_path, env=job_env(), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + HANG_GUARD_S
        while not ((ckpt / ".lock").exists() and (ckpt / ".lock").read_text()):
            assert first.poll() is None and time.monotonic() < deadline
            time.sleep(0.2)
        second = horovodrun(2, [MNIST, "--checkpoint-dir", ckpt, "--metrics-file",
                                tmp_path / "second.jsonl"], cwd=tmp_path, check=False)
        assert first.poll() is None  # the first job was not disturbed
    finally:
        first.kill()
        first.wait()
    assert second.returncode != 0
    errors = worker_errors(second)
    assert len(errors) == 2, second.stderr[-3000:]  # every rank says it
    assert all(f"is in use by another job (pid {first.pid} on " in e for e in errors), errors
    assert not (tmp_path / "second.jsonl").exists()


@pytest.fixture
def small_disk(tmp_path):
    """A 3 MB tmpfs: room for two MNIST checkpoints (1.3 MB each), not three."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(disk)], check=True)
    yield disk
    subprocess.run(["umount", str(disk)], check=False)


def test_a_full_disk_is_a_one_line_error_and_keeps_every_checkpoint(tmp_path, small_disk):
    ckpt = small_disk / "ckpt"
    proc = horovodrun(2, [MNIST, "--checkpoint-dir", ckpt, "--checkpoint-steps", "5",
                          "--metrics-file", tmp_path / "m.jsonl"], cwd=tmp_path, check=False)
    assert proc.returncode != 0
    errors = worker_errors(proc)
    assert len(errors) == 2, proc.stderr[-3000:]
    assert all("No space left on device; the checkpoints already there are kept" in e
               for e in errors), errors
    # said at the first save, before the failing one, with the fix (rank 0's line)
    [warning] = [x for x in proc.stderr.splitlines() if "warning: --keep-checkpoints 3 needs" in x]
    assert "a later save will fail with a full disk" in warning, warning
    assert warning.endswith("or no smaller --keep-checkpoints fits"), warning
    assert "<stderr>:Traceback" not in proc.stderr
    saved = sorted(p.name for p in ckpt.iterdir())
    assert saved == [".lock", "ckpt-e00000-s000000005.pt", "ckpt-e00000-s000000010.pt",
                     "config.yaml"]  # no temporary file leaked
    for name in saved[1:3]:
        assert load_checkpoint(ckpt / name)["step"] in (5, 10)  # whole, loadable


def test_a_silently_corrupted_newest_checkpoint_is_skipped_and_the_run_resumes_exactly(
        tmp_path, uninterrupted, fault_record):
    import torch

    run = tmp_path / "run"
    horovodrun(2, [MNIST, *FAULT_FLAGS, "--max-steps", "100", "--checkpoint-dir", run / "ckpt",
                   "--metrics-file", run / "m.jsonl"], cwd=tmp_path)
    steps = checkpoint_steps(run / "ckpt")
    # every 30 steps, each epoch end and the stop (keep 3 vouched for, and the newest)
    assert steps == [60, 89, 90, 100]
    newest = run / "ckpt" / "ckpt-e00001-s000000100.pt"
    bad = torch.load(newest, weights_only=True)
    bad["model"]["fc2.bias"][0] += 1e-3  # bits changed on disk; its checksum is the old one
    torch.save(bad, newest)
    proc = rerun_matches(run, uninterrupted, tmp_path, FAULT_FLAGS)
    assert ("skipped unreadable checkpoints: ckpt-e00001-s000000100.pt (its content does not "
            "match its checksum; moved to ckpt-e00001-s000000100.pt.corrupt)") in proc.stdout
    assert "(1 epoch(s) and 1 step(s) done, step 90)" in proc.stdout
    assert (run / "ckpt" / "ckpt-e00001-s000000100.pt.corrupt").exists()
    fault_record.append({"hung": False, "lost": 0})


def test_rank_0_killed_during_a_background_write_loses_nothing_and_resumes_exactly(
        tmp_path, fault_record):
    """--checkpoint-mode async (the default): training goes on while rank 0's thread writes.
    A ResNet-18 (90 MB of checkpoint) keeps a write in flight long enough to kill rank 0 in
    it: every checkpoint written before is untouched, the rerun resumes from the newest and
    ends with the uninterrupted run's exact weights."""
    write_image_folders(tmp_path / "data", classes=2, train_per_class=12, val_per_class=2)
    flags = [RECIPES / "pytorch" / "imagenet_resnet50.py", "--train-dir", tmp_path / "data/train",
             "--val-dir", tmp_path / "data/val", "--model", "resnet18", "--image-size", "32",
             "--batch-size", "2", "--epochs", "1", "--checkpoint-steps", "2",
             "--data-workers", "0", "--no-progress"]  # 6 steps, a checkpoint every 2
    ref = tmp_path / "reference"
    horovodrun(2, [*flags, "--checkpoint-dir", ref / "ckpt", "--metrics-file", ref / "m.jsonl"],
               cwd=tmp_path)
    reference = load_checkpoint(final_record(ref / "m.jsonl")["checkpoint"])
    run = tmp_path / "run"
    job = Faulty("gloo", flags[0], flags[1:], run, tmp_path)
    ckpt, deadline = run / "ckpt", time.monotonic() + HANG_GUARD_S
    while True:  # a checkpoint written, and the next one's temporary file there: mid-write
        assert job.job.poll() is None, job.job.communicate()
        assert time.monotonic() < deadline, "no write in flight after a finished one"
        names = os.listdir(ckpt) if ckpt.is_dir() else []
        if any(n.startswith("ckpt-") for n in names) and any(n.startswith(".tmp-") for n in names):
            break
        time.sleep(0.002)
    before = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in ckpt.glob("ckpt-*")}
    job.inject(job.rank_pid(0), signal.SIGKILL, fault_record)  # bounded; nothing lost
    assert list(ckpt.glob(".tmp-*"))  # the write was cut off
    after = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in ckpt.glob("ckpt-*")}
    assert after == before  # every checkpoint written before the kill, as it was
    proc = horovodrun(2, [*flags, "--checkpoint-dir", ckpt, "--metrics-file", run / "m.jsonl"],
                      cwd=tmp_path)
    newest = max(before)
    assert f"resumed from {ckpt / newest}" in proc.stdout, proc.stdout[-2000:]
    assert "removed 1 temporary file(s) left by an interrupted write" in proc.stdout
    final = load_checkpoint(final_record(run / "m.jsonl")["checkpoint"])
    assert final["step"] == reference["step"] == 6
    assert max_abs_diff(final["model"], reference["model"]) == 0.0  # bit-identical
    assert not list(ckpt.glob(".tmp-*"))
