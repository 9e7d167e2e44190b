"""The PyTorch recipes on tiny data: CIFAR-10, ImageNet folders, the synthetic benchmark, elastic, one
process with --amp and TensorBoard."""

from __future__ import annotations

import subprocess

import pytest

from common.data.datasets import write_image_folders
from tests.support import (
    BIN,
    HANG_GUARD_S,
    MNIST,
    RECIPES,
    final_record,
    horovodrun,
    job_env,
    load_checkpoint,
    max_abs_diff,
    read_records,
    run_elastic_growth,
    run_recipe,
    tensorboard_scalars,
    world_records,
    write_cifar,
)

PT = RECIPES / "pytorch"
CIFAR10, IMAGENET = PT / "cifar10_resnet.py", PT / "imagenet_resnet50.py"
CIFAR = ["--batch-size", "4", "--epochs", "2", "--warmup-epochs", "0.5", "--weight-decay", "5e-4"]


def test_cifar_recipe_and_step_level_resume(tmp_path):
    data = tmp_path / "data"
    write_cifar(data)
    full, proc = run_recipe(horovodrun, 2, CIFAR10, tmp_path / "full", "--data-dir", data, *CIFAR)
    final = final_record(full / "metrics.jsonl")
    assert final["world_size"] == 2 and final["step"] == 10  # 40 samples / (2 x 4) x 2 epochs
    assert 0 <= final["val_accuracy"] <= 1 and final["samples_per_sec"] > 0
    assert (full / "ckpt" / "config.yaml").read_text().count("depth: 20") == 1

    # A run killed after its step-6 checkpoint (mid-epoch 2): simulate with --max-steps 7 and
    # deleting what came after step 6, then resume.
    part, _ = run_recipe(horovodrun, 2, CIFAR10, tmp_path / "part", "--data-dir", data, *CIFAR,
                         "--checkpoint-steps", "3", "--max-steps", "7")
    steps = sorted(load_checkpoint(p)["step"] for p in (part / "ckpt").glob("ckpt-*.pt"))
    # every 3 steps, at the epoch end (5) and at the stop; keep 3 vouched for and the newest
    assert steps == [3, 5, 6, 7]
    next(p for p in (part / "ckpt").glob("ckpt-*.pt") if load_checkpoint(p)["step"] == 7).unlink()
    _, proc = run_recipe(horovodrun, 2, CIFAR10, tmp_path / "part", "--data-dir", data, *CIFAR)
    assert "(1 epoch(s) and 1 step(s) done, step 6)" in proc.stdout
    a = load_checkpoint(final_record(full / "metrics.jsonl")["checkpoint"])
    b = load_checkpoint(final_record(part / "metrics.jsonl")["checkpoint"])
    weights = {k: v for k, v in a["model"].items() if "running" not in k and "num_batches" not in k}
    assert max_abs_diff(weights, {k: b["model"][k] for k in weights}) == 0.0
    # The resumed epoch's metrics include the steps before the kill, as uninterrupted.
    last = [r for r in read_records(part / "metrics.jsonl") if r["type"] == "epoch"][-1]
    full_last = [r for r in read_records(full / "metrics.jsonl") if r["type"] == "epoch"][-1]
    assert last["train_loss"] == pytest.approx(full_last["train_loss"], rel=1e-12)


def test_cifar_without_data_dir_is_one_line_error(tmp_path):
    proc = horovodrun(1, [CIFAR10], cwd=tmp_path, check=False)
    assert proc.returncode != 0
    assert "error: --data-dir is required" in proc.stderr


def test_imagenet_recipe_on_tiny_folders(tmp_path):
    write_image_folders(tmp_path / "img")
    out, proc = run_recipe(horovodrun, 2, IMAGENET, tmp_path / "run",
                           "--train-dir", tmp_path / "img" / "train",
                           "--val-dir", tmp_path / "img" / "val", "--model", "resnet18",
                           "--image-size", "32", "--batch-size", "2", "--epochs", "2",
                           "--warmup-epochs", "1", "--decay-epochs", "1", "--data-workers", "1",
                           "--label-smoothing", "0.1")
    final = final_record(out / "metrics.jsonl")
    assert final["world_size"] == 2 and final["step"] == 8  # 18 / (2 x 2) = 4 steps x 2 epochs
    assert final["val_top5"] == 1.0  # only 3 classes: the label is always in the top 5
    assert 0 <= final["val_accuracy"] <= 1
    assert "resnet18, 3 classes" in proc.stdout
    epochs = [r for r in read_records(out / "metrics.jsonl") if r["type"] == "epoch"]
    assert epochs[1]["lr"] == pytest.approx(0.0125 * 2 * 0.1)  # x0.1 once 1 epoch is done


def test_imagenet_mismatched_classes_fail_before_training(tmp_path):
    write_image_folders(tmp_path / "img")
    (tmp_path / "img" / "val" / "class2").rename(tmp_path / "img" / "val" / "other")
    proc = horovodrun(2, [IMAGENET, "--train-dir", tmp_path / "img" / "train",
                          "--val-dir", tmp_path / "img" / "val"], cwd=tmp_path, check=False)
    assert proc.returncode != 0
    assert "must be the same class folders" in proc.stderr


def test_synthetic_benchmark_summary(tmp_path):
    metrics = tmp_path / "bench.jsonl"
    proc = horovodrun(2, [PT / "synthetic_benchmark.py", "--model", "shufflenet_v2_x0_5",
                          "--image-size", "32", "--batch-size", "2", "--num-iters", "3",
                          "--num-batches-per-iter", "2", "--num-warmup-batches", "1",
                          "--fp16-allreduce", "--metrics-file", metrics], cwd=tmp_path)
    [rec] = [r for r in read_records(metrics) if r["type"] == "benchmark"]
    assert rec["world_size"] == 2 and rec["fp16_allreduce"] is True
    assert rec["model"] == "shufflenet_v2_x0_5"
    assert rec["img_per_sec_total"] == pytest.approx(2 * rec["img_per_sec_per_worker"])
    assert rec["img_per_sec_per_worker"] > 0 and rec["img_per_sec_total_ci95"] >= 0
    assert proc.stdout.count("total img/s on 2 worker(s)") == 1


def test_elastic_run_grows_loses_a_worker_and_grows_back(tmp_path):
    """2 workers, a host joins (3), its worker is killed (2), the host comes back (3): the joiner
    gets the others' state instead of deadlocking its restore against their sync."""
    records, output = run_elastic_growth(PT / "elastic_mnist.py", tmp_path, leave="killed")
    assert world_records(records) == [(2, 3, "hosts changed"), (3, 2, "a worker failed"),
                                      (2, 3, "hosts changed")]
    assert output.count("world changed: 3 worker(s) now (hosts changed)") == 2
    assert output.count("world changed: 2 worker(s) now (a worker failed)") == 1
    assert final_record(tmp_path / "metrics.jsonl")["world_size"] == 3


def test_single_process_amp_notice_tensorboard_and_config(tmp_path):
    """Alone (no launcher): --amp on CPU is a one-line notice; --log-dir gets TensorBoard scalars."""
    (tmp_path / "c.yaml").write_text("epochs: 2\nbatch-size: 64\n")
    proc = subprocess.run([str(BIN / "python"), str(MNIST), "--config",
                           str(tmp_path / "c.yaml"), "--amp", "--log-dir", str(tmp_path / "tb"),
                           "--checkpoint-dir", str(tmp_path / "ckpt"), "--metrics-file",
                           str(tmp_path / "m.jsonl")], cwd=tmp_path, env=job_env(),
                          capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("note: --amp ignored: no CUDA device") == 1
    assert "epochs=2 batch_size=64" in proc.stdout  # the resolved config, printed once
    assert proc.stdout.count("config: ") == 1
    scalars = tensorboard_scalars(tmp_path / "tb")["scalars"]
    assert {"train/loss", "val/accuracy", "lr", "samples_per_sec", "balance/balance_spread",
            "balance/comm_share"} <= set(scalars)
    assert [step for step, _ in scalars["val/accuracy"]] == [22, 44]  # 1,438 // 64 per epoch
    final = final_record(tmp_path / "m.jsonl")
    assert scalars["val/accuracy"][-1][1] == pytest.approx(final["val_accuracy"])


@pytest.mark.gpu
@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA GPU")
def test_amp_on_gpu_trains(tmp_path):
    proc = subprocess.run([str(BIN / "python"), str(MNIST), "--amp",
                           "--epochs", "3", "--checkpoint-dir", str(tmp_path / "ckpt"),
                           "--metrics-file", str(tmp_path / "m.jsonl")], cwd=tmp_path,
                          env=job_env(), capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "--amp ignored" not in proc.stdout
    assert final_record(tmp_path / "m.jsonl")["val_accuracy"] > 0.5
