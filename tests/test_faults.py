"""Fault injection on real multi-process jobs: a second job on a directory, a full disk, bad launches.

Each test injects one fault into a real launch and asserts that the job ended (no hang: every
launch is bounded by conftest's guard), its exit status, the line the user sees on every rank,
and that no checkpoint was lost or leaked.
"""

from __future__ import annotations

import os
import re
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
    worker_pids,
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


LAUNCHERS = {
    "gloo": [str(BIN / "horovodrun"), "-np", "2", "-H", "localhost:2", "--gloo",
             "--disable-cache"],
    "mpi": [str(BIN / "horovodrun"), "-np", "2", "-H", "localhost:2"],  # the README's default
    "mpirun": ["mpirun", *(["--allow-run-as-root"] if os.geteuid() == 0 else []), "-np", "2",
               "-bind-to", "none", "-x", "PATH", "-x", "PYTHONPATH", "-x", "PYTHONUNBUFFERED",
               "-x", "OMP_NUM_THREADS"],
}
WRAP = [str(BIN / "hvd-launch")]  # the console script make setup installs
# A fault's job must end this long after the injection (the stall timeout plus the launcher's
# own wind-down); far below conftest's guard against a hung test.
END_BOUND_S = 90


class Faulty:
    """One launch of a recipe into which a fault is injected once its first epoch is recorded."""

    def __init__(self, launcher: str, script: Path, flags: list, run: Path, cwd: Path,
                 wrapped: bool = False) -> None:
        self.script, self.run = script, run
        cmd = [*(WRAP if wrapped else []), *LAUNCHERS[launcher], str(BIN / "python"),
               str(script), *map(str, flags), "--checkpoint-dir", str(run / "ckpt"),
               "--metrics-file", str(run / "m.jsonl")]
        self.job = subprocess.Popen(cmd, cwd=cwd, env=job_env(), stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True, start_new_session=True)
        self.out = self.err = ""
        self.seconds = 0.0
        self.steps_saved: list[int] = []

    def wait_for_first_epoch(self) -> None:
        deadline = time.monotonic() + HANG_GUARD_S
        metrics = self.run / "m.jsonl"
        while not (metrics.exists() and read_records(metrics)):
            assert self.job.poll() is None, self.job.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.1)

    def rank_pid(self, rank: int) -> int:
        pids = worker_pids(self.script, f"HOROVOD_RANK={rank}", f"OMPI_COMM_WORLD_RANK={rank}")
        assert len(pids) == 1, f"workers of rank {rank}: {pids}"
        return pids[0]

    def inject(self, pid: int, sig: signal.Signals, record: list) -> None:
        """Send ``sig`` to ``pid``, wait for the job to end (bounded), note what it left."""
        self.steps_saved = checkpoint_steps(self.run / "ckpt", load=False)
        t0 = time.monotonic()
        os.kill(pid, sig)
        try:
            self.out, self.err = self.job.communicate(timeout=END_BOUND_S)
        except subprocess.TimeoutExpired:
            os.killpg(self.job.pid, signal.SIGKILL)
            self.out, self.err = self.job.communicate()
            record.append({"hung": True, "lost": 0})
            pytest.fail(f"the job did not end within {END_BOUND_S} s of {sig.name}")
        finally:
            if self.job.poll() is None:
                os.killpg(self.job.pid, signal.SIGKILL)
        self.seconds = time.monotonic() - t0
        kept = checkpoint_steps(self.run / "ckpt")
        # Lost: a step checkpointed before the fault with no checkpoint as new kept after it.
        lost = sum(1 for step in self.steps_saved if not kept or max(kept) < step)
        record.append({"hung": False, "lost": lost})
        assert lost == 0, (self.steps_saved, kept)
        assert "<stderr>:Traceback" not in self.err and "Traceback" not in self.out


def checkpoint_steps(folder: Path, load: bool = True) -> list[int]:
    """Steps of the checkpoints in ``folder``; ``load``: each is loaded and verified (only when
    no job writes there: a running job's rotation deletes files)."""
    from common.checkpoint import verified

    steps = []
    for path in sorted(folder.glob("ckpt-*")):
        if path.suffix == ".pt" and load:
            steps.append(int(verified(load_checkpoint(path))["step"]))
        elif path.suffix in (".pt", ".npz"):  # by name (TF's are loaded by the resuming run)
            steps.append(int(path.stem.split("-s")[1]))
    return sorted(steps)


def rerun_matches(run: Path, reference: dict, cwd: Path, flags: list) -> subprocess.CompletedProcess:
    """The same command again resumes and ends with the uninterrupted run's exact weights."""
    proc = horovodrun(2, [MNIST, *flags, "--checkpoint-dir", run / "ckpt", "--metrics-file",
                          run / "m.jsonl"], cwd=cwd)
    final = load_checkpoint(final_record(run / "m.jsonl")["checkpoint"])
    assert final["step"] == reference["step"]
    assert max_abs_diff(final["model"], reference["model"]) == 0.0  # bit-identical
    assert not list((run / "ckpt").glob(".tmp-*"))  # a killed writer's leftovers are gone
    epochs = [r["epoch"] for r in read_records(run / "m.jsonl") if r["type"] == "epoch"]
    assert epochs == sorted(set(epochs)) and epochs[-1] == 4  # each epoch once
    return proc


FLAGS = ["--epochs", "4", "--batch-size", "8", "--checkpoint-steps", "30", "--no-progress",
         "--stall-timeout", "8"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The reference: FLAGS run start to end with no fault."""
    run = tmp_path_factory.mktemp("uninterrupted")
    horovodrun(2, [MNIST, *FLAGS, "--checkpoint-dir", run / "ckpt", "--metrics-file",
                   run / "m.jsonl"], cwd=run)
    return load_checkpoint(final_record(run / "m.jsonl")["checkpoint"])


@pytest.mark.parametrize("launcher,rank", [("mpi", 0), ("mpi", 1), ("gloo", 0), ("gloo", 1)])
def test_a_killed_rank_ends_the_job_and_the_rerun_resumes_exactly(tmp_path, uninterrupted,
                                                                   fault_record, launcher, rank):
    run = tmp_path / "run"
    job = Faulty(launcher, MNIST, FLAGS, run, tmp_path)
    job.wait_for_first_epoch()
    job.inject(job.rank_pid(rank), signal.SIGKILL, fault_record)
    assert job.job.returncode != 0
    said = job.err.replace("\n", " ")
    assert ("exited on signal 9" in said if launcher == "mpi"
            else "Exit code: 137" in said or "exit with status code 137" in said), job.err[-3000:]
    rerun_matches(run, uninterrupted, tmp_path, FLAGS)


@pytest.mark.parametrize("launcher", ["mpi", "gloo"])
def test_a_stopped_rank_ends_the_job_after_the_stall_timeout_naming_it(tmp_path, uninterrupted,
                                                                       fault_record, launcher):
    run = tmp_path / "run"
    job = Faulty(launcher, MNIST, FLAGS, run, tmp_path)
    job.wait_for_first_epoch()
    job.inject(job.rank_pid(1), signal.SIGSTOP, fault_record)
    assert job.seconds >= 8  # not before the timeout
    assert re.search(r"Exit code: +124|exit with status code 124", job.err), job.err[-3000:]
    lines = [x for x in job.err.splitlines() if "error: stalled:" in x]
    assert lines, job.err[-3000:]
    # rank 0's verdict, on a line of its own (horovodrun tags no line under MPI: common.quiet)
    tag = "" if launcher == "mpi" else "[0]<stderr>:"
    said = [x for x in lines if x.startswith(f"{tag}error: stalled:")]
    assert len(said) in (1, 2) and len(set(said)) == 1, job.err[-5000:]  # see the TF test below
    said = said[0]
    assert said.count("<stderr>:") == (0 if launcher == "mpi" else 1)
    assert "(--stall-timeout 8); rank 1 on " in said and "stopped answering" in said
    rerun_matches(run, uninterrupted, tmp_path, FLAGS)


@pytest.mark.parametrize("recipe", ["mnist.py", "keras_mnist.py"])
def test_a_stopped_rank_ends_a_tensorflow_job_too(tmp_path, fault_record, recipe):
    script = MNIST.parents[1] / "tensorflow" / recipe
    run = tmp_path / "run"
    job = Faulty("mpi", script, FLAGS, run, tmp_path)
    job.wait_for_first_epoch()
    job.inject(job.rank_pid(1), signal.SIGSTOP, fault_record)
    assert re.search(r"Exit code: +124", job.err), job.err[-3000:]
    # Untagged under MPI (common.quiet): rank 0's verdict, and the same line from rank 1 when
    # mpirun's ending of the job lets it run again to read the verdict rank 0 sent it.
    said = [x for x in job.err.splitlines() if x.startswith("error: stalled:")]
    assert len(said) in (1, 2) and len(set(said)) == 1, job.err[-5000:]
    said = said[0]
    assert "rank 1 on " in said and "stopped answering" in said


@pytest.mark.parametrize("launcher,sig", [("mpi", signal.SIGTERM), ("mpi", signal.SIGINT),
                                          ("mpirun", signal.SIGTERM), ("gloo", signal.SIGINT)])
def test_a_signal_to_hvd_launch_stops_every_worker_at_a_checkpoint(tmp_path, uninterrupted,
                                                                    fault_record, launcher, sig):
    run = tmp_path / "run"
    job = Faulty(launcher, MNIST, FLAGS, run, tmp_path, wrapped=True)
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
    rerun_matches(run, uninterrupted, tmp_path, FLAGS)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["TERM", "KILL"])
def test_workers_of_a_horovodrun_that_dies_stop_at_a_checkpoint_not_orphaned(
        tmp_path, uninterrupted, fault_record, sig):
    """horovodrun under MPI dies on SIGTERM (or SIGKILL) and would leave mpirun and the workers
    training; the workers notice and stop at the next step with a checkpoint."""
    run = tmp_path / "run"
    job = Faulty("mpi", MNIST, FLAGS, run, tmp_path)
    job.wait_for_first_epoch()
    workers = [job.rank_pid(0), job.rank_pid(1)]
    job.inject(job.job.pid, sig, fault_record)
    deadline = time.monotonic() + END_BOUND_S
    while any(Path(f"/proc/{pid}").exists() for pid in workers):
        assert time.monotonic() < deadline, "workers outlived their launcher"
        time.sleep(0.2)
    [line] = [x for x in job.out.splitlines() if "stopped by" in x]  # mpirun kept the pipe
    assert re.search(r"stopped by (SIGHUP on rank \d|signals on 2 ranks) after step", line), line
    assert "the launcher (horovodrun, pid " in job.err
    step = int(line.split("after step ")[1].split()[0])
    assert max(checkpoint_steps(run / "ckpt")) == step
    rerun_matches(run, uninterrupted, tmp_path, FLAGS)


def test_a_silently_corrupted_newest_checkpoint_is_skipped_and_the_run_resumes_exactly(
        tmp_path, uninterrupted, fault_record):
    import torch

    run = tmp_path / "run"
    horovodrun(2, [MNIST, *FLAGS, "--max-steps", "100", "--checkpoint-dir", run / "ckpt",
                   "--metrics-file", run / "m.jsonl"], cwd=tmp_path)
    steps = checkpoint_steps(run / "ckpt")
    assert steps == [89, 90, 100]  # every 30 steps, each epoch end and the stop (keep 3)
    newest = run / "ckpt" / "ckpt-e00001-s000000100.pt"
    bad = torch.load(newest, weights_only=True)
    bad["model"]["fc2.bias"][0] += 1e-3  # bits changed on disk; its checksum is the old one
    torch.save(bad, newest)
    proc = rerun_matches(run, uninterrupted, tmp_path, FLAGS)
    assert ("skipped unreadable checkpoints: ckpt-e00001-s000000100.pt (its content does not "
            "match its checksum; moved to ckpt-e00001-s000000100.pt.corrupt)") in proc.stdout
    assert "(epoch 1, step 90)" in proc.stdout
    assert (run / "ckpt" / "ckpt-e00001-s000000100.pt.corrupt").exists()
    fault_record.append({"hung": False, "lost": 0})


def signal_rank1(script: Path, flags: list, run: Path, cwd: Path, sig, record: list) -> int:
    """Send ``sig`` to rank 1 of a Gloo job after its first epoch: every rank must stop after
    one step with exit 75 and a checkpoint of that step; returns the step."""
    job = Faulty("gloo", script, flags, run, cwd)
    job.wait_for_first_epoch()
    job.inject(job.rank_pid(1), sig, record)
    assert job.job.returncode != 0
    # Both ranks agreed and exit 75 (the launcher reports the first; it may end the other).
    assert re.search(r"Exit code: +75|exit with status code 75", job.err), job.err[-3000:]
    [line] = [x for x in job.out.splitlines() if "stopped by" in x]
    assert f"stopped by {sig.name} on rank 1 after step " in line and "run the same command" in line
    step = int(line.split("after step ")[1].split()[0])
    assert max(checkpoint_steps(run / "ckpt")) == step
    assert not list((run / "ckpt").glob(".tmp-*"))
    return step


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGUSR1],
                         ids=["TERM", "INT", "USR1"])
def test_a_signal_on_one_worker_stops_all_at_one_step_and_resumes_exactly(tmp_path, sig,
                                                                         fault_record):
    flags = ["--epochs", "10", "--batch-size", "8", "--no-progress"]
    run = tmp_path / "run"
    signal_rank1(MNIST, flags, run, tmp_path, sig, fault_record)
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
def test_tensorflow_recipes_stop_on_a_signal_and_resume(tmp_path, recipe, fault_record):
    script = MNIST.parents[1] / "tensorflow" / recipe
    flags = ["--epochs", "6", "--batch-size", "8", "--no-progress"]
    run = tmp_path / "run"
    step = signal_rank1(script, flags, run, tmp_path, signal.SIGTERM, fault_record)
    proc = horovodrun(2, [script, *flags, "--checkpoint-dir", run / "ckpt", "--metrics-file",
                          run / "m.jsonl"], cwd=tmp_path)
    assert f"(epoch 1, step {step})" in proc.stdout
    assert final_record(run / "m.jsonl")["step"] == 6 * 89
    epochs = [r["epoch"] for r in read_records(run / "m.jsonl") if r["type"] == "epoch"]
    assert epochs == list(range(1, 7))
