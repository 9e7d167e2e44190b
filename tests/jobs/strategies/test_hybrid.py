"""Hybrid (pipeline x data) parallelism run for real under mpirun: exactly what one process trains with
the global batch, resumable on another layout."""

from __future__ import annotations

import pytest

from tests.support import (
    HYBRID,
    STEPS,
    TWO_EPOCHS,
    horovodrun,
    load_checkpoint,
    max_abs_diff,
    run_strategy,
)


@pytest.mark.parametrize("stages, replicas, micro", [(2, 2, 1), (2, 2, 4), (2, 1, 4), (4, 1, 3)],
                         ids=["S2xR2", "S2xR2-M4", "S2xR1-M4", "S4xR1-M3"])
def test_hybrid_equals_one_process_with_the_global_batch(tmp_path, reference, stages, replicas,
                                                         micro):
    proc, final = run_strategy(HYBRID, tmp_path, "hybrid", stages * replicas, "--stages", str(stages),
                             "--micro-batches", str(micro), "--batch-size", str(32 // replicas))
    assert f"{stages} stage(s) x {replicas} replica(s), {micro} micro-batch(es)" in proc.stdout
    assert proc.stdout.count("final: val accuracy") == 1  # rank 0 alone reports
    hybrid = load_checkpoint(final["checkpoint"])
    single = load_checkpoint(reference["checkpoint"])
    # The checkpoint holds the whole model, gathered from the stages, under the whole model's names.
    assert max_abs_diff(hybrid["model"], single["model"]) < 1e-5
    assert final["val_loss"] == pytest.approx(reference["val_loss"], abs=1e-5)
    assert final["train_loss"] == pytest.approx(reference["train_loss"], abs=1e-5)
    assert final["samples_per_sec"] > 0


def test_hybrid_resumes_on_another_layout(tmp_path, two_epochs_alone, two_epochs_data):
    """Checkpoints hold the whole model and optimizer by name: a 2x2 run's first epoch,
    continued as 4 stages x 1 replica, ends where 2 epochs in one process end."""
    two = [*TWO_EPOCHS, *two_epochs_data]
    run_strategy(HYBRID, tmp_path, "run", 4, "--stages", "2", "--batch-size", "16", *two, "--epochs", "1")
    proc, final = run_strategy(HYBRID, tmp_path, "run", 4, "--stages", "4", "--batch-size", "32", *two)
    assert "resumed from" in proc.stdout and "(1 epoch(s) done, step 10)" in proc.stdout
    single = two_epochs_alone
    assert final["step"] == single["step"]
    assert max_abs_diff(load_checkpoint(final["checkpoint"])["model"],
                        load_checkpoint(single["checkpoint"])["model"]) < 1e-5
    momentum = load_checkpoint(final["checkpoint"])["optimizer"]["state"]
    assert set(momentum) == {f"{layer}.{p}" for layer in ("conv1", "conv2", "fc1", "fc2")
                             for p in ("weight", "bias")}


@pytest.mark.parametrize("np, flags, message", [
    (2, ["--stages", "3"], "error: --stages 3 x --replicas 1 = 3 ranks, but the job has 2"),
    (2, ["--stages", "1", "--replicas", "1"],
     "error: --stages 1 x --replicas 1 = 1 ranks, but the job has 2"),
    (2, ["--stages", "2", "--micro-batches", "64", "--batch-size", "32"],
     "error: --batch-size 32 is smaller than --micro-batches 64"),
], ids=["SxR-not-world", "replicas-not-world", "micro-batches"])
def test_bad_layouts_are_one_line_errors_on_every_rank(tmp_path, np, flags, message):
    proc, _ = run_strategy(HYBRID, tmp_path, "bad", np, *flags, check=False)
    assert proc.returncode != 0
    assert proc.stderr.count(message) == np, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr


def test_hybrid_needs_an_mpi_launch(tmp_path):
    proc = horovodrun(2, [HYBRID, *STEPS, "--checkpoint-dir", ""], cwd=tmp_path, check=False)
    assert proc.returncode != 0
    assert "error: the pipeline (hybrid_parallel.py) needs an MPI launch" in proc.stderr
