"""The TensorFlow recipes and Keras callbacks: equivalence, resume, LR parity with PyTorch, callbacks."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import (
    ROOT,
    final_record,
    horovodrun,
    read_records,
    run_elastic_and_kill_one,
)

TF = ROOT / "recipes" / "tensorflow"
PT = ROOT / "recipes" / "pytorch"
pytestmark = pytest.mark.multiprocess


def run(recipe, np_, tmp, name, *flags):
    out = tmp / name
    proc = horovodrun(np_, [recipe, "--checkpoint-dir", out / "ckpt", "--metrics-file",
                            out / "metrics.jsonl", *flags], cwd=tmp)
    return out, proc


def weights(out) -> list[np.ndarray]:
    with np.load(final_record(out / "metrics.jsonl")["checkpoint"]) as f:
        header = json.loads(str(f["header"]))
        return [f[f"v{i}"] for i in range(header["count"])], header


def max_diff(a, b) -> float:
    return max(float(np.abs(x.astype(np.float64) - y).max()) for x, y in zip(a, b, strict=True))


EQUIV = ["--momentum", "0", "--lr-scaling", "none", "--warmup-epochs", "0", "--lr-decay", "none",
         "--base-lr", "0.1", "--max-steps", "6", "--epochs", "1"]


def test_custom_loop_two_workers_equal_one_worker_with_double_batch(tmp_path):
    two, _ = run(TF / "mnist.py", 2, tmp_path, "two", *EQUIV, "--batch-size", "8")
    one, _ = run(TF / "mnist.py", 1, tmp_path, "one", *EQUIV, "--batch-size", "16")
    half, _ = run(TF / "mnist.py", 1, tmp_path, "half", *EQUIV, "--batch-size", "8")
    (w2, h2), (w1, h1), (wh, _) = weights(two), weights(one), weights(half)
    assert h2["step"] == h1["step"] == 6
    n_model = 6  # conv, conv, dense, dense: kernel and bias each
    assert max_diff(w2[:n_model], w1[:n_model]) < 1e-5
    assert max_diff(wh[:n_model], w1[:n_model]) > 1e-3  # the check can fail


RESUME = ["--warmup-epochs", "1", "--lr-decay", "step", "--decay-epochs", "3", "--momentum", "0.9"]


@pytest.mark.parametrize("recipe", ["mnist.py", "keras_mnist.py"])
def test_resume_matches_uninterrupted_run(tmp_path, recipe):
    full, _ = run(TF / recipe, 2, tmp_path, "full", *RESUME, "--epochs", "4")
    part, _ = run(TF / recipe, 2, tmp_path, "part", *RESUME, "--epochs", "2")
    assert weights(part)[1]["epoch"] == 2
    _, proc = run(TF / recipe, 2, tmp_path, "part", *RESUME, "--epochs", "4")
    (a, ha), (b, hb) = weights(full), weights(part)
    assert ha["epoch"] == hb["epoch"] == 4 and ha["step"] == hb["step"]
    diff = max_diff(a, b)  # weights and optimizer slots
    assert diff <= 1e-6, diff
    final_full, final_part = final_record(full / "metrics.jsonl"), final_record(part / "metrics.jsonl")
    assert final_part["val_accuracy"] == pytest.approx(final_full["val_accuracy"], abs=1e-9)
    assert final_part["world_size"] == 2


def test_custom_loop_resumes_mid_epoch_with_exact_metric_sums(tmp_path):
    """The TF checkpoint holds every rank's RNG state and partial-epoch counters, as PyTorch's."""
    full, _ = run(TF / "mnist.py", 2, tmp_path, "full", *RESUME, "--epochs", "2")
    part, _ = run(TF / "mnist.py", 2, tmp_path, "part", *RESUME, "--epochs", "2",
                  "--max-steps", "30")  # 22 steps per epoch: stopped 8 steps into epoch 2
    _, stopped = weights(part)
    assert (stopped["epoch"], stopped["step"]) == (1, 30)
    assert len(stopped["rng"]) == 2 and len(stopped["epoch_sums"]) == 2
    assert all(sums[1] == 8 * 32 for sums in stopped["epoch_sums"])  # 8 steps x 32 samples
    _, proc = run(TF / "mnist.py", 2, tmp_path, "part", *RESUME, "--epochs", "2")
    assert "(epoch 1, step 30)" in proc.stdout
    (a, ha), (b, hb) = weights(full), weights(part)
    assert ha["step"] == hb["step"] == 44
    assert max_diff(a, b) <= 1e-6  # weights and optimizer slots
    last = [r for r in read_records(part / "metrics.jsonl") if r["type"] == "epoch"][-1]
    full_last = [r for r in read_records(full / "metrics.jsonl") if r["type"] == "epoch"][-1]
    # The resumed epoch's metrics include the 8 steps before the stop, as uninterrupted.
    assert last["train_loss"] == pytest.approx(full_last["train_loss"], rel=1e-9)
    assert last["train_accuracy"] == full_last["train_accuracy"]


def test_pytorch_and_tensorflow_see_the_same_lr(tmp_path):
    flags = ["--epochs", "4", "--warmup-epochs", "1.5", "--lr-decay", "step", "--decay-epochs",
             "3", "--base-lr", "0.02", "--batches-per-allreduce", "2", "--batch-size", "16"]
    pt, _ = run(PT / "mnist.py", 2, tmp_path, "pt", *flags)
    tf, _ = run(TF / "mnist.py", 2, tmp_path, "tf", *flags)
    keras, _ = run(TF / "keras_mnist.py", 2, tmp_path, "keras", *flags)
    lrs = {}
    for name, out in (("pt", pt), ("tf", tf), ("keras", keras)):
        recs = [r for r in read_records(out / "metrics.jsonl") if r["type"] == "epoch"]
        lrs[name] = [(r["step"], r["lr"]) for r in recs]
    assert lrs["pt"] == lrs["tf"]
    assert [s for s, _ in lrs["keras"]] == [s for s, _ in lrs["pt"]]
    assert [lr for _, lr in lrs["keras"]] == pytest.approx([lr for _, lr in lrs["pt"]], rel=1e-12)
    target = 0.02 * 2 * 2  # 2 workers x 2 batches per allreduce
    assert lrs["pt"][1][1] == pytest.approx(target)  # warmup over by the end of epoch 2
    assert lrs["pt"][3][1] == pytest.approx(target * 0.1)  # decayed after 3 epochs


def test_elastic_keras_run_survives_a_killed_worker(tmp_path):
    records, output = run_elastic_and_kill_one(TF / "elastic_keras_mnist.py", tmp_path,
                                               epochs=20)
    assert "world changed: 2 worker(s) now" in output  # the trainer re-entered the new world
    assert final_record(tmp_path / "metrics.jsonl")["world_size"] == 2
    epochs = [r["epoch"] for r in records if r["type"] == "epoch"]
    assert set(epochs) == set(range(1, 21))  # no epoch skipped (a restarted one repeats)


def test_tf_synthetic_benchmark_summary(tmp_path):
    metrics = tmp_path / "bench.jsonl"
    proc = horovodrun(2, [TF / "synthetic_benchmark.py", "--model", "MobileNetV2",
                          "--image-size", "32", "--batch-size", "2", "--num-iters", "3",
                          "--num-batches-per-iter", "2", "--num-warmup-batches", "1",
                          "--metrics-file", metrics], cwd=tmp_path)
    [rec] = [r for r in read_records(metrics) if r["type"] == "benchmark"]
    assert rec["world_size"] == 2 and rec["model"] == "MobileNetV2"
    assert rec["img_per_sec_total"] == pytest.approx(2 * rec["img_per_sec_per_worker"])
    assert proc.stdout.count("total img/s on 2 worker(s)") == 1


def test_tensorflow_recipe_writes_tensorboard_without_torch(tmp_path):
    """Alone (no launcher): --log-dir scalars through tf.summary; torch is never imported."""
    import subprocess

    from conftest import BIN, HANG_GUARD_S, job_env
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorflow.python.framework.tensor_util import MakeNdarray

    script = ("import sys; from recipes.tensorflow.mnist import main; "
              f"main(['--epochs', '2', '--batch-size', '64', '--log-dir', {str(tmp_path / 'tb')!r}, "
              f"'--checkpoint-dir', {str(tmp_path / 'ckpt')!r}, '--metrics-file', "
              f"{str(tmp_path / 'm.jsonl')!r}]); print('torch imported:', 'torch' in sys.modules)")
    proc = subprocess.run([str(BIN / "python"), "-c", script], cwd=tmp_path, env=job_env(),
                          capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "torch imported: False" in proc.stdout
    events = EventAccumulator(str(tmp_path / "tb"), size_guidance={"tensors": 0})
    events.Reload()
    tags = set(events.Tags()["tensors"])
    assert {"train/loss", "val/accuracy", "val/macro_f1", "lr", "samples_per_sec",
            "balance/balance_spread"} <= tags
    accuracy = events.Tensors("val/accuracy")
    assert [e.step for e in accuracy] == [22, 44]  # 1,438 // 64 steps per epoch
    final = final_record(tmp_path / "m.jsonl")
    assert float(MakeNdarray(accuracy[-1].tensor_proto)) == pytest.approx(final["val_accuracy"])
