"""Multi-process tests: real 2-worker Horovod jobs (horovodrun, Gloo, localhost) of the MNIST recipe."""

from __future__ import annotations

import json

import pytest
from conftest import (
    HELPERS,
    MNIST,
    final_record,
    horovodrun,
    load_checkpoint,
    max_abs_diff,
    read_records,
)

pytestmark = pytest.mark.multiprocess


def run_mnist(np_, tmp, name, *flags, check=True):
    out = tmp / name
    proc = horovodrun(np_, [MNIST, "--checkpoint-dir", out / "ckpt",
                            "--metrics-file", out / "metrics.jsonl", *flags], cwd=tmp, check=check)
    return out, proc


def test_recipe_trains_on_two_workers(tmp_path):
    out, proc = run_mnist(2, tmp_path, "run")
    final = final_record(out / "metrics.jsonl")
    assert final["world_size"] == 2
    assert final["val_accuracy"] >= 0.90, final
    assert final["samples_per_sec"] > 0
    assert final["samples_per_sec_per_worker"] == pytest.approx(final["samples_per_sec"] / 2)
    epochs = [r for r in read_records(out / "metrics.jsonl") if r["type"] == "epoch"]
    assert [r["epoch"] for r in epochs] == list(range(1, 13))
    assert epochs[-1]["train_loss"] < epochs[0]["train_loss"]
    assert final["checkpoint"] and (out / "ckpt").joinpath(final["checkpoint"]).exists()
    ckpt = load_checkpoint(final["checkpoint"])
    assert ckpt["epoch"] == 12 and ckpt["world_size"] == 2
    # Rank 0 alone prints progress: one final line, not two.
    assert proc.stdout.count("final: val accuracy") == 1
    assert str(final["checkpoint"]) in proc.stdout
    # keep-K (default 3)
    assert len(list((out / "ckpt").glob("ckpt-*.pt"))) == 3


EQUIV = ["--momentum", "0", "--lr-scaling", "none", "--warmup-epochs", "0", "--lr-decay", "none",
         "--base-lr", "0.1", "--max-steps", "6", "--epochs", "1"]


def test_two_workers_equal_one_worker_with_double_batch(tmp_path):
    two, _ = run_mnist(2, tmp_path, "two", *EQUIV, "--batch-size", "8")
    one, _ = run_mnist(1, tmp_path, "one", *EQUIV, "--batch-size", "16")
    half, _ = run_mnist(1, tmp_path, "half", *EQUIV, "--batch-size", "8")
    w2 = load_checkpoint(final_record(two / "metrics.jsonl")["checkpoint"])
    w1 = load_checkpoint(final_record(one / "metrics.jsonl")["checkpoint"])
    wh = load_checkpoint(final_record(half / "metrics.jsonl")["checkpoint"])
    assert w2["step"] == w1["step"] == 6
    assert max_abs_diff(w2["model"], w1["model"]) < 1e-5
    # The comparison can fail: 1 worker on half the samples ends somewhere else.
    assert max_abs_diff(wh["model"], w1["model"]) > 1e-3


def test_two_workers_equal_one_worker_with_accumulation(tmp_path):
    """batches-per-allreduce 2 on 2 workers of batch 4 == 1 worker of batch 16."""
    acc, _ = run_mnist(2, tmp_path, "acc", *EQUIV, "--batch-size", "4",
                       "--batches-per-allreduce", "2")
    one, _ = run_mnist(1, tmp_path, "one", *EQUIV, "--batch-size", "16")
    wa = load_checkpoint(final_record(acc / "metrics.jsonl")["checkpoint"])
    w1 = load_checkpoint(final_record(one / "metrics.jsonl")["checkpoint"])
    assert max_abs_diff(wa["model"], w1["model"]) < 1e-5


RESUME = ["--warmup-epochs", "1", "--lr-decay", "step", "--decay-epochs", "3",
          "--momentum", "0.9", "--weight-decay", "1e-4", "--batch-size", "32"]


def test_resume_matches_uninterrupted_run(tmp_path):
    full, _ = run_mnist(2, tmp_path, "full", *RESUME, "--epochs", "4")
    part, _ = run_mnist(2, tmp_path, "part", *RESUME, "--epochs", "2")
    assert load_checkpoint(final_record(part / "metrics.jsonl")["checkpoint"])["epoch"] == 2
    _, proc = run_mnist(2, tmp_path, "part", *RESUME, "--epochs", "4")
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


def test_resume_mid_epoch_matches_uninterrupted_run(tmp_path):
    full, _ = run_mnist(2, tmp_path, "full", *RESUME, "--epochs", "2")
    part, _ = run_mnist(2, tmp_path, "part", *RESUME, "--epochs", "2", "--max-steps", "30")
    assert load_checkpoint(final_record(part / "metrics.jsonl")["checkpoint"])["step"] == 30
    run_mnist(2, tmp_path, "part", *RESUME, "--epochs", "2")
    a = load_checkpoint(final_record(full / "metrics.jsonl")["checkpoint"])
    b = load_checkpoint(final_record(part / "metrics.jsonl")["checkpoint"])
    assert a["step"] == b["step"]
    assert max_abs_diff(a["model"], b["model"]) == 0.0


def test_broadcast_makes_differently_seeded_ranks_equal(tmp_path):
    out = tmp_path / "bcast.json"
    horovodrun(2, [HELPERS / "broadcast_check.py", out], cwd=tmp_path)
    result = json.loads(out.read_text())
    assert result["before_equal"] is False  # seeds really differed
    assert result["after_equal"] is True
    assert result["after_max_diff"] == 0.0


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


def test_crash_on_one_rank_ends_the_job(tmp_path):
    proc = horovodrun(2, [HELPERS / "crash_one_rank.py"], cwd=tmp_path, check=False)
    assert proc.returncode != 0
    assert "error on rank 1: RuntimeError: rank 1 fails on purpose" in proc.stderr


def test_mnist_idx_data_dir(tmp_path):
    from test_data import write_mnist

    data = tmp_path / "mnist"
    data.mkdir()
    write_mnist(data, n_train=64, n_val=20, gz=True)
    out, proc = run_mnist(2, tmp_path, "idx", "--data-dir", data, "--epochs", "2",
                          "--batch-size", "8")
    final = final_record(out / "metrics.jsonl")
    assert "64 train / 20 val samples (mnist-train)" in proc.stdout
    assert final["world_size"] == 2 and final["step"] == 8


def test_resume_on_another_world_size_continues_from_last_full_epoch(tmp_path):
    out, _ = run_mnist(2, tmp_path, "run", "--epochs", "3", "--max-steps", "50")  # 2 epochs + 6
    assert load_checkpoint(final_record(out / "metrics.jsonl")["checkpoint"])["epoch"] == 2
    _, proc = run_mnist(1, tmp_path, "run", "--epochs", "3")
    assert "continuing from the start of epoch 3" in proc.stdout
    records = read_records(out / "metrics.jsonl")
    # The interrupted epoch 3's record is replaced by the resumed run's: each epoch once.
    assert [r["epoch"] for r in records if r["type"] == "epoch"] == [1, 2, 3]
    final = final_record(out / "metrics.jsonl")
    assert final["world_size"] == 1 and final["step"] == 3 * 44  # 1,438 samples / 32 per step


@pytest.mark.parametrize("recipe", ["pytorch/mnist.py", "tensorflow/mnist.py",
                                    "tensorflow/keras_mnist.py"])
def test_divergence_stops_every_rank_and_keeps_good_checkpoints(tmp_path, recipe):
    script = MNIST.parents[1] / recipe
    out = tmp_path / "run"
    flags = [script, "--checkpoint-dir", out / "ckpt", "--metrics-file", out / "m.jsonl",
             "--checkpoint-steps", "5", "--batch-size", "64"]
    horovodrun(2, [*flags, "--epochs", "1"], cwd=tmp_path)
    good = {p.name: p.read_bytes() for p in (out / "ckpt").glob("ckpt-*")}
    assert good
    proc = horovodrun(2, [*flags, "--epochs", "3", "--base-lr", "1e4"], cwd=tmp_path, check=False)
    assert proc.returncode != 0
    assert "resuming with settings that differ from the saved run's: base_lr 0.05 -> 10000.0" \
        in proc.stdout
    errors = [line for line in proc.stderr.splitlines()
              if "error: training diverged: the loss " in line]
    assert len(errors) == 2, proc.stderr[-3000:]  # one line from each rank
    assert {p.name: p.read_bytes() for p in (out / "ckpt").glob("ckpt-*")} == good
    assert "Traceback" not in proc.stdout and "<stderr>:Traceback" not in proc.stderr


@pytest.mark.parametrize("recipe", ["pytorch/mnist.py", "tensorflow/keras_mnist.py"])
def test_rollback_reloads_the_last_good_checkpoint_on_every_rank_and_goes_on(tmp_path, recipe):
    """A run resumed at LR 1e4 diverges, rolls back to the checkpoint it started from with the
    LR x1e-5, and ends as a run resumed from that checkpoint at LR 0.1 (1e4 x 1e-5) does."""
    import shutil

    script = MNIST.parents[1] / recipe

    def flags(out):
        return [script, "--checkpoint-dir", out / "ckpt", "--metrics-file", out / "m.jsonl",
                "--checkpoint-steps", "5", "--batch-size", "64", "--epochs", "3"]

    wild, calm = tmp_path / "wild", tmp_path / "calm"
    horovodrun(2, [*flags(wild), "--epochs", "1"], cwd=tmp_path)  # 11 steps, sound
    shutil.copytree(wild, calm)
    proc = horovodrun(2, [*flags(wild), "--base-lr", "1e4", "--on-divergence", "rollback",
                          "--rollback-lr-factor", "1e-5"], cwd=tmp_path)
    rollbacks = [x for x in proc.stdout.splitlines() if "training diverged: " in x]
    assert len(rollbacks) == 1, proc.stdout[-3000:]  # one was enough
    assert "rollback 1 of 3: back to " in rollbacks[0] and "s000000011" in rollbacks[0]
    assert "the LR now x1e-05" in rollbacks[0]
    assert "Traceback" not in proc.stdout and "<stderr>:Traceback" not in proc.stderr
    horovodrun(2, [*flags(calm), "--base-lr", "0.1"], cwd=tmp_path)
    a, b = final_record(wild / "m.jsonl"), final_record(calm / "m.jsonl")
    assert [r["epoch"] for r in read_records(wild / "m.jsonl") if r["type"] == "epoch"] == [1, 2, 3]
    assert a["step"] == b["step"] == 3 * 11  # 1,438 samples / (2 x 64) per step
    assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-4)
    if recipe.startswith("pytorch"):
        assert max_abs_diff(load_checkpoint(a["checkpoint"])["model"],
                            load_checkpoint(b["checkpoint"])["model"]) < 1e-5
