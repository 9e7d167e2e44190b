"""--sync-bn: 2 workers x B with synchronized batch norm train the CIFAR ResNet (PyTorch) and a Keras 3
CNN as 1 worker x 2B does (weights and running statistics); without it they differ; a model
without batch norm is refused."""

from __future__ import annotations

import json

import numpy as np

from tests.support import (
    BIN,
    HELPERS,
    LAUNCHERS,
    MNIST,
    RECIPES,
    final_checkpoint,
    horovodrun,
    max_abs_diff,
    max_array_diff,
    python,
    run_job,
    run_recipe,
    write_cifar,
)

CIFAR10 = RECIPES / "pytorch" / "cifar10_resnet.py"
EQUIV = ["--momentum", "0", "--lr-scaling", "none", "--warmup-epochs", "0", "--lr-decay", "none",
         "--base-lr", "0.1", "--weight-decay", "0", "--max-steps", "3", "--epochs", "1"]


def test_synchronized_batch_norm_equals_one_worker_with_the_global_batch(tmp_path):
    data = tmp_path / "data"
    write_cifar(data)
    runs = {name: run_recipe(horovodrun, np, CIFAR10, tmp_path / name, "--data-dir", data,
                             *EQUIV, "--batch-size", str(batch), *flags)[0]
            for name, np, batch, flags in (("one", 1, 8, []), ("sync", 2, 4, ["--sync-bn"]),
                                           ("plain", 2, 4, []))}
    one, sync, plain = (final_checkpoint(runs[n])["model"] for n in ("one", "sync", "plain"))
    stats = [k for k in one if k.endswith(("running_mean", "running_var"))]
    assert len(stats) > 10
    assert max_abs_diff(sync, one) < 1e-5
    assert max_abs_diff({k: sync[k] for k in stats}, {k: one[k] for k in stats}) < 1e-5
    # the comparison can fail: each worker's own statistics train another model
    assert max_abs_diff({k: plain[k] for k in stats}, {k: one[k] for k in stats}) > 1e-4
    assert max_abs_diff(plain, one) > 1e-4


def test_sync_bn_on_a_model_without_batch_norm_is_a_one_line_error(tmp_path):
    proc = python([MNIST, "--sync-bn", "--checkpoint-dir", ""], cwd=tmp_path, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: --sync-bn: the model has no batch norm layer to synchronize"), proc.stderr


def test_keras3_synchronized_batch_norm_equals_one_worker_with_the_global_batch(tmp_path):
    """The TF custom loop and Keras 3's model.fit, 3 steps of 2 workers x 4 with --sync-bn."""
    def weights(np_: int, *args: str) -> list[np.ndarray]:
        cmd = [*(LAUNCHERS["mpi"] if np_ == 2 else []), BIN / "python", HELPERS / "tf_sync_bn.py",
               *args]
        proc = run_job(cmd, tmp_path, check=True)
        return [np.array(w) for w in json.loads(proc.stdout.strip().splitlines()[-1])["weights"]]

    one, sync, fit, plain = (weights(1, "0"), weights(2, "1"), weights(2, "1", "keras"),
                             weights(2, "0"))
    assert max_array_diff(sync, one) < 1e-5  # kernels, gamma, beta, moving mean and variance
    assert max_array_diff(fit, one) < 1e-5
    assert max_array_diff(plain, one) > 1e-4  # each worker's own statistics: it can fail
