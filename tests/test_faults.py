"""Fault injection on real multi-process jobs: a second job on a directory, a full disk, bad launches.

Each test injects one fault into a real launch and asserts that the job ended (no hang: every
launch is bounded by conftest's guard), its exit status, the line the user sees on every rank,
and that no checkpoint was lost or leaked.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import (
    BIN,
    HANG_GUARD_S,
    MNIST,
    final_record,
    horovodrun,
    job_env,
    load_checkpoint,
    max_abs_diff,
    read_records,
)

pytestmark = pytest.mark.multiprocess


def worker_errors(proc) -> list[str]:
    return [line.split("<stderr>:", 1)[1] for line in proc.stderr.splitlines()
            if "<stderr>:error:" in line]


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
    assert "<stderr>:Traceback" not in proc.stderr
    saved = sorted(p.name for p in ckpt.iterdir())
    assert saved == [".lock", "ckpt-e00000-s000000005.pt", "ckpt-e00000-s000000010.pt",
                     "config.yaml"]  # no temporary file leaked
    for name in saved[1:3]:
        assert load_checkpoint(ckpt / name)["step"] in (5, 10)  # whole, loadable


def test_adasum_under_gloo_is_a_one_line_error_before_training(tmp_path):
    proc = horovodrun(2, [MNIST, "--use-adasum", "--checkpoint-dir", tmp_path / "ckpt",
                          "--metrics-file", tmp_path / "m.jsonl"], cwd=tmp_path, check=False)
    assert proc.returncode != 0
    errors = worker_errors(proc)
    assert errors == ["error: --use-adasum needs an MPI launch (mpirun, or horovodrun without "
                      "--gloo): this Horovod runs Adasum over MPI, or over NCCL on GPUs, not "
                      "over Gloo"] * 2, proc.stderr[-3000:]
    assert not (tmp_path / "m.jsonl").exists()  # nothing trained


def _rank_pid(script: Path, rank: int) -> int | None:
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if str(script).encode() in cmd and f"HOROVOD_RANK={rank}".encode() in env \
                and cmd.split(b"\0")[0].endswith(b"python"):
            return int(pid)
    return None


def signal_rank1_after_epoch_1(script: Path, flags: list, run: Path, tmp_path: Path, sig) -> int:
    """Launch ``script`` on 2 Gloo workers; once epoch 1 is recorded send ``sig`` to rank 1.
    The job must stop every rank after one step with exit 75 and a checkpoint of that step;
    returns the step."""
    cmd = [str(BIN / "horovodrun"), "-np", "2", "-H", "localhost:2", "--gloo", "--disable-cache",
           str(BIN / "python"), str(script), *map(str, flags), "--checkpoint-dir",
           str(run / "ckpt"), "--metrics-file", str(run / "m.jsonl")]
    job = subprocess.Popen(cmd, cwd=tmp_path, env=job_env(), stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + HANG_GUARD_S
        while not ((run / "m.jsonl").exists() and read_records(run / "m.jsonl")):
            assert job.poll() is None, job.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.1)
        victim = _rank_pid(script, 1)
        assert victim
        os.kill(victim, sig)
        out, err = job.communicate(timeout=HANG_GUARD_S)
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
    assert job.returncode != 0
    # Both ranks agreed and exit 75 (the launcher reports the first; it may end the other).
    assert "exit with status code 75" in err or "Exit code: 75" in err, err[-3000:]
    assert "Traceback" not in out and "<stderr>:Traceback" not in err
    [line] = [x for x in out.splitlines() if "stopped by" in x]
    assert f"stopped by {sig.name} on rank 1 after step " in line and "run the same command" in line
    step = int(line.split("after step ")[1].split()[0])
    newest = max((run / "ckpt").glob("ckpt-*"), key=lambda p: int(p.stem.split("-s")[1]))
    assert int(newest.stem.split("-s")[1]) == step
    assert not list((run / "ckpt").glob(".tmp-*"))
    return step


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGUSR1],
                         ids=["TERM", "INT", "USR1"])
def test_a_signal_on_one_worker_stops_all_at_one_step_and_resumes_exactly(tmp_path, sig):
    flags = ["--epochs", "10", "--batch-size", "8", "--no-progress"]
    run = tmp_path / "run"
    signal_rank1_after_epoch_1(MNIST, flags, run, tmp_path, sig)
    horovodrun(2, [MNIST, *flags, "--checkpoint-dir", run / "ckpt", "--metrics-file",
                   run / "m.jsonl"], cwd=tmp_path)  # the same command resumes
    whole = tmp_path / "whole"
    horovodrun(2, [MNIST, *flags, "--checkpoint-dir", whole / "ckpt", "--metrics-file",
                   whole / "m.jsonl"], cwd=tmp_path)
    a = load_checkpoint(final_record(run / "m.jsonl")["checkpoint"])
    b = load_checkpoint(final_record(whole / "m.jsonl")["checkpoint"])
    assert a["step"] == b["step"] == 10 * 89
    assert max_abs_diff(a["model"], b["model"]) == 0.0  # bit-identical
    epochs = [r["epoch"] for r in read_records(run / "m.jsonl") if r["type"] == "epoch"]
    assert epochs == list(range(1, 11))


@pytest.mark.parametrize("recipe", ["mnist.py", "keras_mnist.py"])
def test_tensorflow_recipes_stop_on_a_signal_and_resume(tmp_path, recipe):
    script = MNIST.parents[1] / "tensorflow" / recipe
    flags = ["--epochs", "6", "--batch-size", "8", "--no-progress"]
    run = tmp_path / "run"
    step = signal_rank1_after_epoch_1(script, flags, run, tmp_path, signal.SIGTERM)
    proc = horovodrun(2, [script, *flags, "--checkpoint-dir", run / "ckpt", "--metrics-file",
                          run / "m.jsonl"], cwd=tmp_path)
    assert f"(epoch 1, step {step})" in proc.stdout
    assert final_record(run / "m.jsonl")["step"] == 6 * 89
    epochs = [r["epoch"] for r in read_records(run / "m.jsonl") if r["type"] == "epoch"]
    assert epochs == list(range(1, 7))
