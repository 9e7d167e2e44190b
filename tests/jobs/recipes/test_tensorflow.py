"""The TensorFlow recipes: equivalence, resume, LR parity with PyTorch, elastic Keras, the synthetic
benchmark, TensorBoard without torch."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.support import (
    BIN,
    HANG_GUARD_S,
    KERAS_MNIST,
    MNIST,
    RECIPES,
    TF_MNIST,
    copy_run,
    final_record,
    horovodrun,
    job_env,
    max_array_diff,
    read_records,
    run_elastic_growth,
    run_recipe,
    tensorboard_scalars,
    tf_weights,
    world_records,
)

TF = RECIPES / "tensorflow"
EQUIV = ["--momentum", "0", "--lr-scaling", "none", "--warmup-epochs", "0", "--lr-decay", "none",
         "--base-lr", "0.1", "--max-steps", "6", "--epochs", "1"]



def test_custom_loop_two_workers_equal_one_worker_with_double_batch(tmp_path):
    two, _ = run_recipe(horovodrun, 2, TF_MNIST, tmp_path / "two", *EQUIV, "--batch-size", "8")
    one, _ = run_recipe(horovodrun, 1, TF_MNIST, tmp_path / "one", *EQUIV, "--batch-size", "16")
    half, _ = run_recipe(horovodrun, 1, TF_MNIST, tmp_path / "half", *EQUIV, "--batch-size", "8")
    (w2, h2), (w1, h1), (wh, _) = (tf_weights(out / "metrics.jsonl") for out in (two, one, half))
    assert h2["step"] == h1["step"] == 6
    n_model = 6  # conv, conv, dense, dense: kernel and bias each
    assert max_array_diff(w2[:n_model], w1[:n_model]) < 1e-5
    assert max_array_diff(wh[:n_model], w1[:n_model]) > 1e-3  # the check can fail


def test_keras3_fit_two_workers_equal_one_worker_with_double_batch(tmp_path):
    """Keras 3 model.fit through the core's distributed optimizer: 2 workers x 8 (with a
    gradient predivide factor) and 2 workers x 4 x 2 accumulated passes equal 1 worker x 16.
    (Without the allreduce rank 0 would train on its 8 samples alone: the custom-loop test's
    ``half``, more than 1e-3 away.)"""
    one, _ = run_recipe(horovodrun, 1, KERAS_MNIST, tmp_path / "one", *EQUIV, "--batch-size", "16")
    two, _ = run_recipe(horovodrun, 2, KERAS_MNIST, tmp_path / "two", *EQUIV, "--batch-size", "8",
                        "--gradient-predivide-factor", "2")
    acc, _ = run_recipe(horovodrun, 2, KERAS_MNIST, tmp_path / "acc", *EQUIV, "--batch-size", "4",
                        "--batches-per-allreduce", "2")
    (w1, h1), (w2, h2), (wa, ha) = (tf_weights(out / "metrics.jsonl") for out in (one, two, acc))
    assert h1["step"] == h2["step"] == ha["step"] == 6
    assert len(w1) == len(w2) == len(wa)  # the accumulation sums are not checkpointed state
    n_model = 6
    assert max_array_diff(w2[:n_model], w1[:n_model]) < 1e-5
    assert max_array_diff(wa[:n_model], w1[:n_model]) < 1e-5


# Warmup over a fractional 1.5 epochs, a step decay, momentum and 2 batches per allreduce of 16
# (22 steps of 2 x 2 x 16 samples an epoch): what the resume tests carry over a restart, and
# the LR every framework must see at each step.
RESUME = ["--warmup-epochs", "1.5", "--lr-decay", "step", "--decay-epochs", "3", "--base-lr",
          "0.02", "--batches-per-allreduce", "2", "--batch-size", "16", "--momentum", "0.9"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """``trained(script, epochs)``: RESUME for ``epochs`` on 2 workers, start to end, run once
    per script and length; read by several tests, resumed (a copy) by another."""
    runs: dict[tuple[Path, int], Path] = {}

    def get(script: Path, epochs: int) -> Path:
        if (script, epochs) not in runs:
            runs[script, epochs], _ = run_recipe(horovodrun, 2, script,
                                                 tmp_path_factory.mktemp("run") / "run", *RESUME,
                                                 "--epochs", str(epochs))
        return runs[script, epochs]

    return get


@pytest.mark.parametrize("recipe", ["mnist.py", "keras_mnist.py"])
def test_resume_matches_uninterrupted_run(tmp_path, recipe, trained):
    full = trained(TF / recipe, 4)
    part = copy_run(trained(TF / recipe, 2), tmp_path / "part")  # stopped after 2 epochs
    assert tf_weights(part / "metrics.jsonl")[1]["epoch"] == 2
    _, proc = run_recipe(horovodrun, 2, TF / recipe, tmp_path / "part", *RESUME, "--epochs", "4")
    (a, ha), (b, hb) = tf_weights(full / "metrics.jsonl"), tf_weights(part / "metrics.jsonl")
    assert ha["epoch"] == hb["epoch"] == 4 and ha["step"] == hb["step"]
    diff = max_array_diff(a, b)  # weights and optimizer slots
    assert diff <= 1e-6, diff
    final_full = final_record(full / "metrics.jsonl")
    final_part = final_record(part / "metrics.jsonl")
    assert final_part["val_accuracy"] == pytest.approx(final_full["val_accuracy"], abs=1e-9)
    assert final_part["world_size"] == 2


def test_custom_loop_resumes_mid_epoch_with_exact_metric_sums(tmp_path, trained):
    """The TF checkpoint holds every rank's RNG state and partial-epoch counters, as PyTorch's."""
    full = trained(TF_MNIST, 2)
    part, _ = run_recipe(horovodrun, 2, TF_MNIST, tmp_path / "part", *RESUME, "--epochs", "2",
                  "--max-steps", "30")  # 22 steps per epoch: stopped 8 steps into epoch 2
    _, stopped = tf_weights(part / "metrics.jsonl")
    assert (stopped["epoch"], stopped["step"]) == (1, 30)
    assert len(stopped["rng"]) == 2 and len(stopped["epoch_sums"]) == 2
    assert all(sums[1] == 8 * 32 for sums in stopped["epoch_sums"])  # 8 steps x 2 x 16 samples
    _, proc = run_recipe(horovodrun, 2, TF_MNIST, tmp_path / "part", *RESUME, "--epochs", "2")
    assert "(1 epoch(s) and 8 step(s) done, step 30)" in proc.stdout
    (a, ha), (b, hb) = tf_weights(full / "metrics.jsonl"), tf_weights(part / "metrics.jsonl")
    assert ha["step"] == hb["step"] == 44
    assert max_array_diff(a, b) <= 1e-6  # weights and optimizer slots
    last = [r for r in read_records(part / "metrics.jsonl") if r["type"] == "epoch"][-1]
    full_last = [r for r in read_records(full / "metrics.jsonl") if r["type"] == "epoch"][-1]
    # The resumed epoch's metrics include the 8 steps before the stop, as uninterrupted.
    assert last["train_loss"] == pytest.approx(full_last["train_loss"], rel=1e-9)
    assert last["train_accuracy"] == full_last["train_accuracy"]


def test_pytorch_and_tensorflow_see_the_same_lr(trained):
    """RESUME's 4-epoch runs of the three MNIST recipes (the TensorFlow ones are the resume
    test's uninterrupted runs): the same LR at every epoch's end."""
    lrs = {}
    for name, script in (("pt", MNIST), ("tf", TF_MNIST), ("keras", KERAS_MNIST)):
        recs = [r for r in read_records(trained(script, 4) / "metrics.jsonl")
                if r["type"] == "epoch"]
        lrs[name] = [(r["step"], r["lr"]) for r in recs]
    assert lrs["pt"] == lrs["tf"]
    assert [s for s, _ in lrs["keras"]] == [s for s, _ in lrs["pt"]]
    assert [lr for _, lr in lrs["keras"]] == pytest.approx([lr for _, lr in lrs["pt"]], rel=1e-12)
    target = 0.02 * 2 * 2  # 2 workers x 2 batches per allreduce
    assert lrs["pt"][1][1] == pytest.approx(target)  # warmup over by the end of epoch 2
    assert lrs["pt"][3][1] == pytest.approx(target * 0.1)  # decayed after 3 epochs


def test_elastic_keras_run_grows_shrinks_and_grows_back(tmp_path):
    """model.fit on 2 workers, a host joins (3), is dropped from the discovery script (2) and
    listed again (3): each joiner gets the others' state, each change is recorded."""
    records, output = run_elastic_growth(TF / "elastic_keras_mnist.py", tmp_path,
                                         leave="removed")
    assert world_records(records) == [(2, 3, "hosts changed"), (3, 2, "hosts changed"),
                                      (2, 3, "hosts changed")]
    assert output.count("world changed: 3 worker(s) now") == 2
    assert output.count("world changed: 2 worker(s) now") == 1
    assert final_record(tmp_path / "metrics.jsonl")["world_size"] == 3


@pytest.mark.parametrize("loop", ["tape", "keras-fit"])
def test_tf_synthetic_benchmark_summary(tmp_path, loop):
    """The custom loop's step, and Keras 3's model.fit with the core's optimizer."""
    metrics = tmp_path / "bench.jsonl"
    proc = horovodrun(2, [TF / "synthetic_benchmark.py", "--model", "MobileNet",
                          "--image-size", "32", "--batch-size", "2", "--num-iters", "3",
                          "--num-batches-per-iter", "2", "--num-warmup-batches", "1",
                          "--metrics-file", metrics, *(["--keras-fit"] if loop == "keras-fit" else [])],
                      cwd=tmp_path)
    [rec] = [r for r in read_records(metrics) if r["type"] == "benchmark"]
    assert rec["world_size"] == 2 and rec["model"] == "MobileNet" and rec["loop"] == loop
    assert rec["img_per_sec_total"] == pytest.approx(2 * rec["img_per_sec_per_worker"])
    assert proc.stdout.count("total img/s on 2 worker(s)") == 1


def test_tensorflow_recipe_writes_tensorboard_without_torch(tmp_path):
    """Alone (no launcher): --log-dir scalars through tf.summary; torch is never imported."""
    script = ("import sys; from recipes.tensorflow.mnist import main; "
              f"main(['--epochs', '2', '--batch-size', '64', '--log-dir', {str(tmp_path / 'tb')!r}, "
              f"'--checkpoint-dir', {str(tmp_path / 'ckpt')!r}, '--metrics-file', "
              f"{str(tmp_path / 'm.jsonl')!r}]); print('torch imported:', 'torch' in sys.modules)")
    proc = subprocess.run([str(BIN / "python"), "-c", script], cwd=tmp_path, env=job_env(),
                          capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "torch imported: False" in proc.stdout
    tensors = tensorboard_scalars(tmp_path / "tb")["tensors"]  # tf.summary writes tensors
    assert {"train/loss", "val/accuracy", "val/macro_f1", "lr", "samples_per_sec",
            "balance/balance_spread"} <= set(tensors)
    accuracy = tensors["val/accuracy"]
    assert [step for step, _ in accuracy] == [22, 44]  # 1,438 // 64 steps per epoch
    final = final_record(tmp_path / "m.jsonl")
    assert accuracy[-1][1] == pytest.approx(final["val_accuracy"])
