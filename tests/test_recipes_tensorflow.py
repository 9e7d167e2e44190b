"""The TensorFlow recipes and Keras callbacks: equivalence, resume, LR parity with PyTorch, callbacks."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from conftest import (
    HELPERS,
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


def test_metric_average_callback_gives_global_values(tmp_path):
    out = tmp_path / "logs.json"
    horovodrun(2, [HELPERS / "keras_callbacks_check.py", out], cwd=tmp_path)
    logs = json.loads(out.read_text())
    assert logs["loss"] == pytest.approx(1.5) and logs["accuracy"] == pytest.approx(0.25)
    assert logs["val_loss"] == pytest.approx((3 * 2.0 + 7 * 4.0) / 10)  # weighted, not 3.0
    assert logs["val_accuracy"] == pytest.approx(0.3)


def test_lr_schedule_callback_warmup_endpoints():
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    from common.keras_callbacks import LRScheduleCallback
    from common.schedule import LRSchedule

    class Opt:
        class LR:
            value = None

            def assign(self, v):
                self.value = v

        learning_rate = LR()

    class Model:
        optimizer = Opt()

    cb = LRScheduleCallback(LRSchedule(0.1, 4, steps_per_epoch=10, epochs=5, warmup_epochs=1))
    cb.set_model(Model())
    seen = []
    for b in range(12):
        cb.on_train_batch_begin(b)
        seen.append(Model.optimizer.learning_rate.value)
        cb.on_train_batch_end(b)
    assert seen[0] == pytest.approx(0.1) and seen[10] == pytest.approx(0.4)
    assert all(x < y for x, y in zip(seen[:10], seen[1:11], strict=True))


def test_elastic_keras_run_survives_a_killed_worker(tmp_path):
    records, output = run_elastic_and_kill_one(TF / "elastic_keras_mnist.py", tmp_path,
                                               epochs=20)
    assert "2 worker(s): epochs" in output  # the callbacks were rebuilt for the new world
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
