"""recipes/slurm/horovod.sbatch submitted to a real one-node SLURM (tests/jobs/slurm/conftest.py):
SLURM's time-limit warning signal (mpirun path) and ``scancel --signal=USR1`` to the ranks (srun
path) stop every rank at one checkpoint, the job requeues itself and finishes bit-identical to an
uninterrupted run, in one log file; a job cancelled outright is resumed by the next submission."""

from __future__ import annotations

import os
import re
from pathlib import Path

from common.monitor.balance import SLOW_DATA_ENV
from tests.support import (
    BIN,
    FAULT_FLAGS,
    MNIST,
    checkpoint_steps,
    final_record,
    load_checkpoint,
    max_abs_diff,
    read_records,
)

ROOT_FLAG = "--allow-run-as-root " if os.geteuid() == 0 else ""


class Submission:
    """FAULT_FLAGS (4 epochs, a checkpoint every 30 steps) through horovod.sbatch, 2 tasks on
    the node; the first run's batches each wait ``slow`` seconds on every rank (not more work:
    the numbers stay the uninterrupted run's), the requeued run's do not."""

    def __init__(self, slurm, tmp_path: Path, launcher: str, slow: float, flags=()) -> None:
        self.slurm, self.run = slurm, tmp_path / "run"
        self.run.mkdir()
        python = tmp_path / "python"  # SLURM_RESTART_COUNT is set from the first requeue on
        python.write_text(f'#!/bin/sh\n[ "${{SLURM_RESTART_COUNT:-0}}" = 0 ] && '
                          f'export {SLOW_DATA_ENV}="*:{slow}"\nexec {BIN / "python"} "$@"\n')
        python.chmod(0o755)
        self.env = {"LAUNCHER": launcher, "VENV": str(BIN.parent), "PYTHON": str(python),
                    "MPIRUN_ARGS": ROOT_FLAG + "-mca pml ob1 -mca btl ^openib"}
        self.args = [MNIST, *FAULT_FLAGS, "--checkpoint-dir", self.run / "ckpt",
                     "--metrics-file", self.run / "m.jsonl"]
        self.flags = [f"--output={self.run}/%x-%j.out", *flags]
        self.job_id = self.submit()

    def submit(self, slow: bool = True) -> int:
        env = self.env if slow else {**self.env, "PYTHON": str(BIN / "python")}
        return self.slurm.submit(*self.args, env=env, flags=self.flags)

    def wait_for_first_epoch(self) -> None:
        self.slurm.wait(self.job_id, lambda job: (self.run / "m.jsonl").exists()
                        and bool(read_records(self.run / "m.jsonl")), "its first epoch")

    def log(self, job_id: int | None = None) -> str:
        """The job's log: one file however often it was requeued (--open-mode=append)."""
        [log] = self.run.glob(f"*-{job_id or self.job_id}.out")
        return log.read_text()

    def ends_as(self, uninterrupted: dict) -> None:
        """The run's final checkpoint is the uninterrupted run's, bit for bit; each epoch once."""
        final = load_checkpoint(final_record(self.run / "m.jsonl")["checkpoint"])
        assert final["step"] == uninterrupted["step"]
        assert max_abs_diff(final["model"], uninterrupted["model"]) == 0.0
        epochs = [r["epoch"] for r in read_records(self.run / "m.jsonl") if r["type"] == "epoch"]
        assert epochs == list(range(1, uninterrupted["epoch"] + 1))


def stop_steps(log: str) -> list[int]:
    return [int(step) for step in re.findall(r"stopped by .* after step (\d+) ", log)]


def requeued_and_done(slurm, job_id: int) -> dict:
    return slurm.wait(job_id, lambda job: job["JobState"] in slurm.ENDED
                      and int(job.get("Restarts", 0)) >= 1, "its requeued run's end")


def resumed_at_each_stop(log: str, fault_record: list) -> list[int]:
    """The steps every rank stopped at, one per run that was requeued; each next run resumed
    from its stop's step (else the stop is counted lost in the fault summary, and the test
    fails)."""
    runs = log.split("requeueing job")
    steps = stop_steps(log)  # one step for both ranks ("signals on 2 ranks" or one rank's)
    assert len(steps) == len(runs) - 1 >= 1, log[-3000:]
    lost = sum(f", step {step})" not in runs[i + 1] for i, step in enumerate(steps))
    fault_record.append({"hung": False, "lost": lost})
    assert lost == 0, log[-3000:]
    return steps


def test_the_time_limit_warning_stops_at_a_checkpoint_and_the_requeued_job_ends_as_uninterrupted(
        slurm, tmp_path, uninterrupted, fault_record):
    """mpirun path; --time=1 with --signal=B:USR1@50: SLURM signals the batch script when 50 s
    are left (its time check runs every 30 s or so), in the first run's second or third epoch.
    Each requeued run has the same time limit: one that runs past 10 s itself (a loaded
    machine) is stopped and requeued again, and must resume from that stop too (CI-30 saw two)."""
    job = Submission(slurm, tmp_path, "mpirun", slow=0.12, flags=["--time=1",
                                                                  "--signal=B:USR1@50"])
    end = requeued_and_done(slurm, job.job_id)
    assert end["JobState"] == "COMPLETED", end
    assert len(list(job.run.glob("*.out"))) == 1
    log = job.log()
    assert "horovod.sbatch: got SIGUSR1; asking every rank to stop at a checkpoint" in log
    assert f"horovod.sbatch: stopped at a checkpoint; requeueing job {job.job_id}" in log
    steps = resumed_at_each_stop(log, fault_record)
    assert int(end["Restarts"]) == len(steps)  # a requeue for each stop, none other
    # A stop may come after the last step (a slow machine: CI-32's third run stopped at step
    # 356 of 356); the requeued run then has nothing left to train and ends.
    assert 0 < steps[0] and steps == sorted(steps) and steps[-1] <= uninterrupted["step"]
    job.ends_as(uninterrupted)


def test_scancel_signal_to_the_ranks_under_srun_requeues_and_ends_as_uninterrupted(
        slurm, tmp_path, uninterrupted, fault_record):
    """srun path (PMIx): ``scancel --signal=USR1`` reaches the ranks themselves (the job's
    steps, not the batch script); they exit 75, srun with them, and the script requeues."""
    job = Submission(slurm, tmp_path, "srun", slow=0.02)
    job.wait_for_first_epoch()
    job.slurm.run("scancel", "--signal=USR1", job.job_id)
    end = requeued_and_done(slurm, job.job_id)
    assert end["JobState"] == "COMPLETED" and end["Restarts"] == "1", end
    log = job.log()
    assert "srun --mpi=pmix" in log and "got SIGUSR1" not in log  # the ranks got it, not bash
    assert len(resumed_at_each_stop(log, fault_record)) == 1
    job.ends_as(uninterrupted)


def test_a_job_cancelled_outright_is_resumed_by_the_next_submission(slurm, tmp_path,
                                                                    uninterrupted, fault_record):
    """mpirun path; plain ``scancel``: SIGTERM to everything in the job, SIGKILL 15 s later
    (KillWait), no requeue. The same sbatch command again resumes from the newest checkpoint."""
    job = Submission(slurm, tmp_path, "mpirun", slow=0.02)
    job.wait_for_first_epoch()
    saved = checkpoint_steps(job.run / "ckpt", load=False)
    job.slurm.run("scancel", job.job_id)
    assert slurm.wait(job.job_id)["JobState"] == "CANCELLED"
    kept = checkpoint_steps(job.run / "ckpt")
    fault_record.append({"hung": False, "lost": sum(1 for s in saved if max(kept) < s)})
    assert max(kept) >= max(saved) > 0  # nothing saved before the cancel was lost
    again = job.submit(slow=False)
    assert slurm.wait(again)["JobState"] == "COMPLETED"
    resumed = re.search(r"resumed from .* step (\d+)\)", job.log(again))
    assert resumed and int(resumed[1]) == max(kept)
    job.ends_as(uninterrupted)

