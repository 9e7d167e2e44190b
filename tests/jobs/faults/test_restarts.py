"""hvd-launch --max-restarts: a job that lost a worker is relaunched and resumes from its newest
checkpoint, ending bit-identical to an uninterrupted run; a host that fails twice is left out;
what a restart cannot fix ends at once."""

from __future__ import annotations

import os
import signal

from tests.support import (
    BIN,
    FAULT_FLAGS,
    HVD_LAUNCH,
    LAUNCHERS,
    MNIST,
    Faulty,
    checkpoint_steps,
    final_record,
    load_checkpoint,
    max_abs_diff,
    read_records,
    run_job,
)

RESTART = ["--max-restarts", "1", "--restart-backoff", "0.5"]


def test_a_killed_worker_is_relaunched_and_the_run_ends_as_uninterrupted(tmp_path, uninterrupted,
                                                                        fault_record, alone):
    run = tmp_path / "run"
    with alone():  # the kill's timing: the job alone
        job = Faulty("mpi", MNIST, FAULT_FLAGS, run, tmp_path, wrapped=RESTART)
        job.wait_for_first_epoch()
        job.inject(job.rank_pid(1), signal.SIGKILL, fault_record)
    assert job.job.returncode == 0, job.err[-3000:]
    assert job.err.count("hvd-launch: restart 1 (1 of at most 1 in 3600 s) after exit status") == 1
    records = read_records(run / "m.jsonl")
    [restart] = [r for r in records if r["type"] == "restart"]
    assert restart["attempt"] == 1 and restart["cause"].startswith("exit status ")
    # the newest checkpoint at the relaunch (one may have landed as the kill was sent)
    assert restart["resumed_step"] >= max(job.steps_saved) > 0
    assert restart["checkpoint"].endswith(f"-s{restart['resumed_step']:09d}.pt")
    final = [r for r in records if r["type"] == "final"][-1]
    assert final["restarts"] == 1
    epochs = [r["epoch"] for r in records if r["type"] == "epoch"]
    assert epochs == list(range(1, uninterrupted["epoch"] + 1))  # each epoch once, in order
    ckpt = load_checkpoint(final_record(run / "m.jsonl")["checkpoint"])
    assert ckpt["step"] == uninterrupted["step"]
    assert max_abs_diff(ckpt["model"], uninterrupted["model"]) == 0.0  # bit-identical


def test_a_host_that_failed_twice_is_left_out_and_the_run_ends_on_the_others(tmp_path,
                                                                            fault_record):
    """Two hosts (localhost, 127.0.0.1), one worker each: the worker on 127.0.0.1 is killed in
    the first launch and again in the relaunch; the third launch runs on localhost alone
    (--min-np 1) and finishes the run."""
    run = tmp_path / "run"
    job = Faulty("mpi-two-hosts", MNIST, FAULT_FLAGS, run, tmp_path,
                 wrapped=["--max-restarts", "2", "--restart-backoff", "0.5", "--min-np", "1"])
    job.wait_for_first_epoch()
    saved = checkpoint_steps(run / "ckpt", load=False)
    os.kill(job.rank_pid(1), signal.SIGKILL)
    job.wait_for_relaunch(1)
    resumed = next(r for r in read_records(run / "m.jsonl") if r["type"] == "restart")
    fault_record.append({"hung": False, "lost": int(resumed["resumed_step"] < max(saved))})
    assert resumed["resumed_step"] >= max(saved) > 0  # the relaunch resumed from the newest
    job.inject(job.rank_pid(1), signal.SIGKILL, fault_record)
    assert job.job.returncode == 0, job.err[-3000:]
    assert job.err.count("hvd-launch: lost contact with rank 1 on 127.0.0.1 first") == 2
    assert job.err.count("; rank 1 on 127.0.0.1 lost; relaunching") == 2
    assert ("hvd-launch: leaving out 127.0.0.1: it failed twice in 3600 s; the next launch runs "
            "1 worker(s) on localhost:1") in job.err
    records = read_records(run / "m.jsonl")
    assert [r["attempt"] for r in records if r["type"] == "restart"] == [1, 2]
    final = [r for r in records if r["type"] == "final"][-1]
    assert final["restarts"] == 2 and final["world_size"] == 1
    epochs = [(r["epoch"], r["world_size"]) for r in records if r["type"] == "epoch"]
    assert [e for e, _ in epochs] == [1, 2, 3, 4] and epochs[-1][1] == 1 and epochs[0][1] == 2


def test_what_a_restart_cannot_fix_is_not_restarted(tmp_path):
    """A bad flag (exit 2) ends the job at the first launch, with no restart line."""
    proc = run_job([*HVD_LAUNCH, "--max-restarts", "3", "--restart-backoff", "0", *LAUNCHERS["mpi"],
                    BIN / "python", MNIST, "--epochs", "nope"], tmp_path, check=False)
    assert proc.returncode == 2
    assert "restart" not in proc.stderr
