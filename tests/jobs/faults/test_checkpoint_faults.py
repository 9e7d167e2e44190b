"""Faults around the checkpoint folder of a real job: a second job on it, a full disk, a silently
corrupted newest file."""

from __future__ import annotations

import os
import subprocess
import time

import pytest

from tests.support import (
    BIN,
    FAULT_FLAGS,
    HANG_GUARD_S,
    MNIST,
    checkpoint_steps,
    horovodrun,
    job_env,
    load_checkpoint,
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
