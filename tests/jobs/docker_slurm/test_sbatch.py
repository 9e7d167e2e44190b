"""recipes/slurm/horovod.sbatch run for real on this machine (no SLURM): its mpirun path trains,
SLURM's warning signal stops at a checkpoint and requeues."""

from __future__ import annotations

import os
import signal
import subprocess
import time

from common.monitor.balance import SLOW_DATA_ENV
from tests.support import (
    BIN,
    HANG_GUARD_S,
    MNIST,
    ROOT,
    SBATCH,
    final_record,
    read_records,
    sbatch,
    slurm_env,
)


def test_sbatch_mpirun_path_trains_here(tmp_path):
    """The script's own mpirun command, for a fake 1-node, 2-task allocation on this machine."""
    root = "--allow-run-as-root " if os.geteuid() == 0 else ""
    env = slurm_env(tmp_path, ["localhost"], 2, "2", LAUNCHER="mpirun", VENV=str(BIN.parent),
                    MPIRUN_ARGS=root + "-mca pml ob1 -mca btl ^openib")
    metrics = tmp_path / "metrics.jsonl"
    sbatch(MNIST, "--epochs", "1", "--max-steps", "8", "--no-progress", "--checkpoint-dir",
           tmp_path / "ckpt", "--metrics-file", metrics, env=env)
    final = final_record(metrics)
    assert final["world_size"] == 2 and final["checkpoint"]


def test_sbatch_stops_at_a_checkpoint_on_the_time_limit_signal_and_requeues(tmp_path, alone):
    """SLURM's warning signal (SIGUSR1 to the batch script) reaches both ranks through mpirun;
    they stop at one step with a checkpoint, exit 75, and the script requeues the job; the
    requeued run resumes and finishes."""
    root = "--allow-run-as-root " if os.geteuid() == 0 else ""
    env = slurm_env(tmp_path, ["localhost"], 2, "2", LAUNCHER="mpirun", VENV=str(BIN.parent),
                    MPIRUN_ARGS=root + "-mca pml ob1 -mca btl ^openib", SLURM_JOB_ID="4242")
    metrics = tmp_path / "metrics.jsonl"
    flags = [MNIST, "--epochs", "4", "--batch-size", "8", "--no-progress", "--checkpoint-dir",
             tmp_path / "ckpt", "--metrics-file", metrics]
    # The first job's batches each wait 20 ms on every rank (at least 1.8 s an epoch, not more
    # work): three epochs still to go when the signal comes after the first.
    slowed = {**env, SLOW_DATA_ENV: "*:0.02"}
    with alone():  # signal timing: the job alone; the requeued run beside other tests
        job = subprocess.Popen(["bash", str(SBATCH), *map(str, flags)], cwd=ROOT, env=slowed,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
        try:
            deadline = time.monotonic() + HANG_GUARD_S
            while not (metrics.exists() and read_records(metrics)):
                assert job.poll() is None, job.communicate()
                assert time.monotonic() < deadline
                time.sleep(0.2)
            job.send_signal(signal.SIGUSR1)  # what --signal=B:USR1@180 sends
            out, err = job.communicate(timeout=120)
        finally:
            if job.poll() is None:
                os.killpg(job.pid, signal.SIGKILL)
    assert job.returncode == 75, out[-3000:] + err[-3000:]
    assert "horovod.sbatch: got SIGUSR1" in out
    assert "stopped by signals on 2 ranks after step" in out or "stopped by SIGUSR1" in out
    assert (tmp_path / "bin" / "requeued").read_text().split() == ["requeue", "4242"]
    step = int(out.split("after step ")[1].split()[0])
    proc = sbatch(*flags, env=env)  # the requeued job: same script, same flags
    assert f"step {step})" in proc.stdout  # resumed from the stop's checkpoint
    assert step < 4 * 89 and final_record(metrics)["step"] == 4 * 89
