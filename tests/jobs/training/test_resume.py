"""Resuming real 2-worker jobs of the MNIST recipe: after whole epochs, mid-epoch, and on another world
size."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support import (
    MNIST,
    copy_run,
    final_record,
    horovodrun,
    load_checkpoint,
    max_abs_diff,
    read_records,
    run_recipe,
)

RESUME = ["--warmup-epochs", "1", "--lr-decay", "step", "--decay-epochs", "3",
          "--momentum", "0.9", "--weight-decay", "1e-4", "--batch-size", "32"]



@pytest.fixture(scope="module")
def two_epochs(tmp_path_factory) -> Path:
    """RESUME for 2 epochs on 2 workers, start to end: read by one test, resumed (a copy) by
    another."""
    out, _ = run_recipe(horovodrun, 2, MNIST, tmp_path_factory.mktemp("two") / "run", *RESUME,
                        "--epochs", "2")
    return out


def test_resume_matches_uninterrupted_run(tmp_path, two_epochs):
    # The uninterrupted run writes its checkpoints synchronously, the others in the background
    # (the default): both modes save and resume the same training.
    full, _ = run_recipe(horovodrun, 2, MNIST, tmp_path / "full", *RESUME, "--epochs", "4",
                         "--checkpoint-mode", "sync")
    part = copy_run(two_epochs, tmp_path / "part")  # stopped after 2 epochs
    assert load_checkpoint(final_record(part / "metrics.jsonl")["checkpoint"])["epoch"] == 2
    _, proc = run_recipe(horovodrun, 2, MNIST, tmp_path / "part", *RESUME, "--epochs", "4")
    assert "resumed from" in proc.stdout
    a = load_checkpoint(final_record(full / "metrics.jsonl")["checkpoint"])
    b = load_checkpoint(final_record(part / "metrics.jsonl")["checkpoint"])
    assert a["step"] == b["step"] and a["epoch"] == b["epoch"] == 4
    diff = max_abs_diff(a["model"], b["model"])
    assert diff <= 1e-6, diff
    assert diff == 0.0  # CPU, same reduction order: bit-identical
    moms_a = [s["momentum_buffer"] for s in a["optimizer"]["state"].values()]
    moms_b = [s["momentum_buffer"] for s in b["optimizer"]["state"].values()]
    assert all((x == y).all() for x, y in zip(moms_a, moms_b, strict=True))
    epochs = [r["epoch"] for r in read_records(part / "metrics.jsonl") if r["type"] == "epoch"]
    assert epochs == [1, 2, 3, 4]


def test_resume_mid_epoch_matches_uninterrupted_run(tmp_path, two_epochs):
    full = two_epochs
    part, _ = run_recipe(horovodrun, 2, MNIST, tmp_path / "part", *RESUME, "--epochs", "2",
                         "--max-steps", "30", "--checkpoint-mode", "sync")  # resumed in async
    assert load_checkpoint(final_record(part / "metrics.jsonl")["checkpoint"])["step"] == 30
    run_recipe(horovodrun, 2, MNIST, tmp_path / "part", *RESUME, "--epochs", "2")
    a = load_checkpoint(final_record(full / "metrics.jsonl")["checkpoint"])
    b = load_checkpoint(final_record(part / "metrics.jsonl")["checkpoint"])
    assert a["step"] == b["step"]
    assert max_abs_diff(a["model"], b["model"]) == 0.0


def test_resume_on_another_world_size_continues_from_last_full_epoch(tmp_path):
    out, _ = run_recipe(horovodrun, 2, MNIST, tmp_path / "run", "--epochs", "3",
                        "--max-steps", "50")  # 2 epochs + 6 steps
    assert load_checkpoint(final_record(out / "metrics.jsonl")["checkpoint"])["epoch"] == 2
    _, proc = run_recipe(horovodrun, 1, MNIST, tmp_path / "run", "--epochs", "3")
    assert "continuing from the start of epoch 3" in proc.stdout
    records = read_records(out / "metrics.jsonl")
    # The interrupted epoch 3's record is replaced by the resumed run's: each epoch once.
    assert [r["epoch"] for r in records if r["type"] == "epoch"] == [1, 2, 3]
    final = final_record(out / "metrics.jsonl")
    assert final["world_size"] == 1 and final["step"] == 3 * 44  # 1,438 samples / 32 per step
