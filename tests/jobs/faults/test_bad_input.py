"""Bad input to a real 2-worker job: one line from every rank and a non-zero exit, nothing trained or lost."""

from __future__ import annotations

import pytest

from tests.support import (
    BIN,
    HELPERS,
    LAUNCHERS,
    MNIST,
    horovodrun,
    mpirun,
    run_job,
    worker_errors,
)

# What Open MPI prints after a process exits non-zero (two boxes).
OPEN_MPI_REPORT = ("Primary job  terminated normally", "mpirun detected that one or more processes")


def test_wrong_checkpoint_fails_on_every_rank_and_is_kept(tmp_path):
    other = tmp_path / "other" / "ckpt"
    other.mkdir(parents=True)
    horovodrun(1, [HELPERS / "foreign_checkpoint.py", other], cwd=tmp_path)
    before = {p.name: p.read_bytes() for p in other.iterdir()}
    proc = horovodrun(2, [MNIST, "--checkpoint-dir", other, "--metrics-file",
                          tmp_path / "m.jsonl"], cwd=tmp_path, check=False)
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if "error:" in line and "different model"
              in line]
    assert len(errors) == 2, proc.stderr  # one line from each rank
    after = {p.name: p.read_bytes() for p in other.iterdir() if p.name != ".lock"}
    assert after == before  # nothing changed but the directory's lock file
    assert "<stderr>:Traceback" not in proc.stderr  # a user error, not a crash (the launcher's own
    # traceback for the failed job is horovodrun's, not the workers')


def test_bad_flag_is_one_line_and_ends_the_job(tmp_path):
    proc = horovodrun(2, [MNIST, "--epochs", "0"], cwd=tmp_path, check=False)
    assert proc.returncode != 0
    # Each rank checks its flags before Horovod starts; the first to exit makes the launcher stop
    # the other, which may or may not have printed the same line by then.
    worker_lines = [line for line in proc.stderr.splitlines() if "]<stderr>:" in line]
    said = {line.split("]<stderr>:", 1)[1] for line in worker_lines} - {"Terminated"}
    assert said == {"error: --epochs must be at least 1, got 0"}, proc.stderr


def test_a_one_line_error_under_the_installed_horovodrun_ends_without_open_mpis_report(tmp_path):
    """The README's launch (horovodrun, MPI): the error line from each rank, the job's one line,
    exit status 2, and not Open MPI's ten lines about a process that returned non-zero."""
    proc = run_job([*LAUNCHERS["mpi"], BIN / "python", MNIST, "--epochs", "0"], tmp_path,
                   check=False)
    assert proc.returncode == 2, proc.stderr[-3000:]
    text = proc.stdout + proc.stderr
    assert "error: --epochs must be at least 1, got 0" in text
    assert "horovodrun: job ended with exit status 2: bad input (see the error line above)" in text
    assert not [r for r in OPEN_MPI_REPORT if r in text], text


def test_a_crash_under_the_installed_horovodrun_keeps_open_mpis_report(tmp_path):
    proc = run_job([*LAUNCHERS["mpi"], BIN / "python", HELPERS / "crash_one_rank.py"], tmp_path,
                   check=False)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "error on rank 1: RuntimeError: rank 1 fails on purpose" in proc.stderr
    assert [r for r in OPEN_MPI_REPORT if r in proc.stderr], proc.stderr[-3000:]


def test_a_rank_that_starts_late_still_says_the_error(tmp_path):
    """Under MPI the first rank to find bad input waits (bounded) for the others to find it too
    before it exits: mpirun ends the job at the first non-zero exit, which cut off the line of a
    rank still starting up (common.base.errors.wait_for_the_other_ranks)."""
    proc = mpirun(2, [HELPERS / "late_rank.py", "4", MNIST, "--epochs", "0"], cwd=tmp_path,
                  check=False)
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: --epochs must be at least 1, got 0"] * 2, proc.stderr[-3000:]


def test_crash_on_one_rank_ends_the_job(tmp_path):
    proc = horovodrun(2, [HELPERS / "crash_one_rank.py"], cwd=tmp_path, check=False)
    assert proc.returncode != 0
    assert "error on rank 1: RuntimeError: rank 1 fails on purpose" in proc.stderr


def test_adasum_under_gloo_is_a_one_line_error_before_training(tmp_path):
    proc = horovodrun(2, [MNIST, "--use-adasum", "--checkpoint-dir", tmp_path / "ckpt",
                          "--metrics-file", tmp_path / "m.jsonl"], cwd=tmp_path, check=False)
    assert proc.returncode != 0
    errors = worker_errors(proc)
    assert errors == ["error: --use-adasum needs an MPI launch (mpirun, or horovodrun without "
                      "--gloo): this Horovod runs Adasum over MPI, or over NCCL on GPUs, not "
                      "over Gloo"] * 2, proc.stderr[-3000:]
    assert not (tmp_path / "m.jsonl").exists()  # nothing trained


@pytest.mark.parametrize("framework", ["pytorch", "keras"])
def test_a_recipe_without_its_distributed_line_is_refused_on_every_rank(tmp_path, framework):
    """Without Horovod's optimizer each worker would train a model of its own, exit 0 and save
    rank 0's: the core refuses it, one line from each rank (an MPI launch waits for both to say
    it), before any step."""
    proc = mpirun(2, [HELPERS / "forgotten_distributed_line.py", framework, "--checkpoint-dir",
                      tmp_path / "ckpt", "--metrics-file", tmp_path / "m.jsonl"], cwd=tmp_path,
                  check=False)
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines()
              if "error:" in line and "is not Horovod's" in line and "distributed_optimizer(" in line]
    assert len(errors) == 2, proc.stderr[-3000:]  # one line from each rank
    assert "Traceback" not in proc.stderr
    assert not list((tmp_path / "ckpt").glob("ckpt-*")) and not (tmp_path / "m.jsonl").exists()
