"""Tests of common/launch/hvd_launch.py on real jobs: a signal to hvd-launch, or a horovodrun that dies, stops
every worker at a checkpoint."""

from __future__ import annotations

import re
import signal
import time
from pathlib import Path

import pytest

from tests.support import (
    END_BOUND_S,
    FAULT_FLAGS,
    MNIST,
    Faulty,
    checkpoint_steps,
    rerun_matches,
)


@pytest.mark.parametrize("launcher,sig", [("mpi", signal.SIGTERM), ("mpi", signal.SIGINT),
                                          ("mpirun", signal.SIGTERM), ("gloo", signal.SIGINT)])
def test_a_signal_to_hvd_launch_stops_every_worker_at_a_checkpoint(tmp_path, uninterrupted,
                                                                    fault_record, launcher, sig,
                                                                    alone):
    run = tmp_path / "run"
    with alone():  # signal timing: the job alone; its rerun beside other tests
        job = Faulty(launcher, MNIST, FAULT_FLAGS, run, tmp_path, wrapped=True)
        job.wait_for_first_epoch()
        workers = [job.rank_pid(0), job.rank_pid(1)]
        job.inject(job.job.pid, sig, fault_record)
    assert job.job.returncode == 75, job.err[-3000:]
    assert "hvd-launch: job ended with exit status 75: stopped on a signal after writing a " \
           "checkpoint" in job.err
    [line] = [x for x in job.out.splitlines() if "stopped by" in x]
    step = int(line.split("after step ")[1].split()[0])
    assert max(checkpoint_steps(run / "ckpt")) == step
    for pid in workers:  # no orphan: every worker is gone
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
    rerun_matches(run, uninterrupted, tmp_path, FAULT_FLAGS)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["TERM", "KILL"])
def test_the_installed_horovodrun_stops_cleanly_on_sigterm_and_its_workers_outlive_no_kill(
        tmp_path, uninterrupted, fault_record, sig, alone):
    """The installed horovodrun (MPI): SIGTERM (as Ctrl-C) stops every worker at a checkpoint
    with exit status 75, one line and no Open MPI report; SIGKILL leaves its workers without a
    launcher: they notice it (SIGHUP) and stop at the next step with a checkpoint, none orphaned."""
    run = tmp_path / "run"
    with alone():  # signal timing: the job alone; its rerun beside other tests
        job = Faulty("mpi", MNIST, FAULT_FLAGS, run, tmp_path)
        job.wait_for_first_epoch()
        workers = [job.rank_pid(0), job.rank_pid(1)]
        job.inject(job.job.pid, sig, fault_record)
        deadline = time.monotonic() + END_BOUND_S
        while any(Path(f"/proc/{pid}").exists() for pid in workers):
            assert time.monotonic() < deadline, ("workers outlived their launcher",
                                                 [process_state(pid) for pid in workers])
            time.sleep(0.2)
    [line] = [x for x in job.out.splitlines() if "stopped by" in x]  # mpirun kept the pipe
    if sig == signal.SIGTERM:
        assert job.job.returncode == 75, job.err[-3000:]
        assert re.search(r"stopped by (SIGTERM on rank \d|signals on 2 ranks) after step", line)
        assert "horovodrun: job ended with exit status 75: stopped on a signal after writing a " \
               "checkpoint; run the same command to resume" in job.err
        assert "Primary job" not in job.err and "mpirun detected" not in job.err, job.err
    else:  # (the workers' stderr went through the killed launcher: what they said there is lost)
        assert re.search(r"stopped by (SIGHUP on rank \d|signals on 2 ranks) after step", line), line
    step = int(line.split("after step ")[1].split()[0])
    assert max(checkpoint_steps(run / "ckpt")) == step
    rerun_matches(run, uninterrupted, tmp_path, FAULT_FLAGS)


def process_state(pid: int) -> str:
    """What a process is doing, and its parent's name: ``1234 S (sleeping) under mpirun``."""
    try:
        status = dict(line.split(":\t", 1) for line in
                      Path(f"/proc/{pid}/status").read_text().splitlines() if ":\t" in line)
        parent = Path(f"/proc/{status['PPid'].strip()}/comm").read_text().strip()
        wchan = Path(f"/proc/{pid}/wchan").read_text()
    except OSError:
        return f"{pid} gone"
    return f"{pid} {status['State'].strip()} in {wchan} under {parent}"
