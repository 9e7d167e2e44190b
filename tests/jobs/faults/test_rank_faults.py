"""Faults injected into one rank of a real 2-worker job after its first epoch: killed, stopped,
signalled. The job ends (never hangs), says who, loses no checkpoint, and the same command resumes
exactly."""

from __future__ import annotations

import re
import signal
import time
from pathlib import Path

import pytest

from tests.support import (
    FAULT_FLAGS,
    MNIST,
    STALL_FLAGS,
    Faulty,
    checkpoint_steps,
    final_record,
    horovodrun,
    read_records,
    rerun_matches,
    worker_pids,
)


@pytest.mark.parametrize("launcher,rank", [("mpi", 0), ("mpi", 1), ("gloo", 0), ("gloo", 1)])
def test_a_killed_rank_ends_the_job_and_the_rerun_resumes_exactly(tmp_path, uninterrupted,
                                                                   fault_record, launcher, rank):
    run = tmp_path / "run"
    job = Faulty(launcher, MNIST, FAULT_FLAGS, run, tmp_path)
    job.wait_for_first_epoch()
    job.inject(job.rank_pid(rank), signal.SIGKILL, fault_record)
    assert job.job.returncode != 0
    said = job.err.replace("\n", " ")
    assert ("exited on signal 9" in said if launcher == "mpi"
            else "Exit code: 137" in said or "exit with status code 137" in said), job.err[-3000:]
    rerun_matches(run, uninterrupted, tmp_path, FAULT_FLAGS)


def test_a_rank_stopped_before_training_ends_the_job_within_the_stall_timeout(tmp_path,
                                                                             fault_record, alone):
    """Rank 1 stopped (SIGSTOP) as soon as it exists, before Horovod's start: rank 0's wait in
    hvd.init is bounded by --stall-timeout (it once waited forever, no output)."""
    run = tmp_path / "run"
    with alone():
        job = Faulty("mpi", MNIST, STALL_FLAGS, run, tmp_path)
        deadline = time.monotonic() + 60
        while not (pids := worker_pids(job.job.pid, MNIST, "OMPI_COMM_WORLD_RANK=1")):
            assert job.job.poll() is None and time.monotonic() < deadline, job.job.communicate()
            time.sleep(0.02)
        job.inject(pids[0], signal.SIGSTOP, fault_record)
    assert job.job.returncode == 124, job.err[-3000:]
    assert re.search(r"error on rank 0: stalled: Horovod's start \(hvd.init\) waited 4 s|"
                     r"error: stalled before training started \(--stall-timeout 4\); rank 1 on ",
                     job.err), job.err[-3000:]
    assert job.seconds < 4 + 30


@pytest.mark.parametrize("target", ["rank 1", "hvd-launch"])
def test_a_stop_signal_while_the_workers_start_stops_them_at_the_first_step(tmp_path, fault_record,
                                                                            target):
    """SIGTERM to rank 1 a second after its process appears (still importing torch), or to
    hvd-launch as soon as a worker exists: the signal is held until the loop can agree on it,
    and the job stops at step 1 with a checkpoint, exit status 75 (it once ended with 143 and
    only mpirun's box; through hvd-launch, rank 0 died of SIGUSR1, 138)."""
    run = tmp_path / "run"
    job = Faulty("mpi", MNIST, FAULT_FLAGS, run, tmp_path, wrapped=target == "hvd-launch")
    deadline = time.monotonic() + 60
    while not (pids := worker_pids(job.job.pid, MNIST, "OMPI_COMM_WORLD_RANK=1")):
        assert job.job.poll() is None and time.monotonic() < deadline, job.job.communicate()
        time.sleep(0.02)
    if target == "rank 1":
        time.sleep(1.0)
    job.inject(pids[0] if target == "rank 1" else job.job.pid, signal.SIGTERM, fault_record)
    assert job.job.returncode == 75, job.err[-3000:]
    said = job.out + job.err
    assert re.search(r"stopped by (SIGTERM on rank 1|signals on 2 ranks) after step 1 ", said), said
    assert said.count("exit status 75: stopped on a signal") == 1
    assert "mpirun noticed" not in said and "exited on signal" not in said
    assert checkpoint_steps(run / "ckpt") == [1]


@pytest.mark.parametrize("launcher", ["mpi", "gloo"])
def test_a_stopped_rank_ends_the_job_after_the_stall_timeout_naming_it(tmp_path, uninterrupted,
                                                                       fault_record, launcher,
                                                                       alone):
    run = tmp_path / "run"
    with alone():  # the stall's timing: the job alone; its rerun beside other tests
        job = Faulty(launcher, MNIST, STALL_FLAGS, run, tmp_path)
        job.wait_for_first_epoch()
        job.inject(job.rank_pid(1), signal.SIGSTOP, fault_record)
    assert job.seconds >= 4  # not before the timeout
    assert job.job.returncode == 124, job.err[-3000:]  # the workers' status, MPI and Gloo alike
    assert "horovodrun: job ended with exit status 124: a worker stalled" in job.err
    # the verdict says it all: the launcher's own report of failed processes is not shown
    assert not re.search(r"Exit code:|exit with status code|Primary job", job.err), job.err[-3000:]
    lines = [x for x in job.err.splitlines() if "error: stalled:" in x]
    assert lines, job.err[-3000:]
    # rank 0's verdict, on a line of its own (horovodrun tags no line under MPI: common.world.quiet)
    tag = "" if launcher == "mpi" else "[0]<stderr>:"
    said = [x for x in lines if x.startswith(f"{tag}error: stalled:")]
    assert len(said) in (1, 2) and len(set(said)) == 1, job.err[-5000:]  # see the TF test below
    said = said[0]
    assert said.count("<stderr>:") == (0 if launcher == "mpi" else 1)
    assert "(--stall-timeout 4); rank 1 on " in said and "stopped answering" in said
    rerun_matches(run, uninterrupted, tmp_path, FAULT_FLAGS)  # beside other tests


@pytest.mark.serial
@pytest.mark.parametrize("recipe", ["mnist.py", "keras_mnist.py"])
def test_a_stopped_rank_ends_a_tensorflow_job_too(tmp_path, fault_record, recipe):
    script = MNIST.parents[1] / "tensorflow" / recipe
    run = tmp_path / "run"
    job = Faulty("mpi", script, FAULT_FLAGS, run, tmp_path)
    job.wait_for_first_epoch()
    job.inject(job.rank_pid(1), signal.SIGSTOP, fault_record)
    assert job.job.returncode == 124, job.err[-3000:]
    assert "horovodrun: job ended with exit status 124: a worker stalled" in job.err
    # Untagged under MPI (common.world.quiet): rank 0's verdict, and the same line from rank 1 when
    # mpirun's ending of the job lets it run again to read the verdict rank 0 sent it.
    said = [x for x in job.err.splitlines() if x.startswith("error: stalled:")]
    assert len(said) in (1, 2) and len(set(said)) == 1, job.err[-5000:]
    said = said[0]
    assert "rank 1 on " in said and "stopped answering" in said


def signal_rank1(script: Path, flags: list, run: Path, cwd: Path, sig, record: list,
                 alone, mode: str = "async") -> int:
    """Send ``sig`` to rank 1 of a Gloo job after its first epoch: every rank must stop after
    one step with exit 75 and a checkpoint of that step; returns the step."""
    with alone():  # signal timing: the job alone; the rerun after it beside other tests
        job = Faulty("gloo", script, [*flags, "--checkpoint-mode", mode], run, cwd)
        job.wait_for_first_epoch()
        job.inject(job.rank_pid(1), sig, record)
    # Both ranks agreed and exit 75: the job's status (under Gloo too), without the launcher's
    # report of failed processes.
    assert job.job.returncode == 75, job.err[-3000:]
    assert "horovodrun: job ended with exit status 75: stopped on a signal" in job.err
    assert not re.search(r"Exit code:|exit with status code", job.err), job.err[-3000:]
    [line] = [x for x in job.out.splitlines() if "stopped by" in x]
    assert f"stopped by {sig.name} on rank 1 after step " in line and "run the same command" in line
    step = int(line.split("after step ")[1].split()[0])
    assert max(checkpoint_steps(run / "ckpt")) == step
    assert not list((run / "ckpt").glob(".tmp-*"))
    return step


@pytest.mark.parametrize(("sig", "mode"), [(signal.SIGTERM, "async"), (signal.SIGINT, "async"),
                                           (signal.SIGUSR1, "sync")],
                         ids=["TERM", "INT", "USR1-sync-checkpoints"])
def test_a_signal_on_one_worker_stops_all_at_one_step_and_resumes_exactly(tmp_path, sig, mode,
                                                                         uninterrupted,
                                                                         fault_record, alone):
    run = tmp_path / "run"
    signal_rank1(MNIST, FAULT_FLAGS, run, tmp_path, sig, fault_record, alone, mode)
    rerun_matches(run, uninterrupted, tmp_path, FAULT_FLAGS)  # the same command resumes


@pytest.mark.parametrize("recipe", ["mnist.py", "keras_mnist.py"])
def test_tensorflow_recipes_stop_on_a_signal_and_resume(tmp_path, recipe, fault_record, alone):
    script = MNIST.parents[1] / "tensorflow" / recipe
    flags = ["--epochs", "2", "--batch-size", "8", "--no-progress"]
    run = tmp_path / "run"
    step = signal_rank1(script, flags, run, tmp_path, signal.SIGTERM, fault_record, alone)
    proc = horovodrun(2, [script, *flags, "--checkpoint-dir", run / "ckpt", "--metrics-file",
                          run / "m.jsonl"], cwd=tmp_path)
    assert f"(1 epoch(s) and {step - 89} step(s) done, step {step})" in proc.stdout
    assert final_record(run / "m.jsonl")["step"] == 2 * 89
    epochs = [r["epoch"] for r in read_records(run / "m.jsonl") if r["type"] == "epoch"]
    assert epochs == [1, 2]
