"""Other ways to distribute training, run for real: hybrid (pipeline x data) parallelism.

Each strategy must train exactly what synchronous data parallelism (or one process) trains
with the same global batch: the tests compare the weights after a few SGD steps."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from conftest import BIN, MNIST, ROOT, final_record, job_env, load_checkpoint, max_abs_diff, mpirun

HYBRID = ROOT / "recipes" / "pytorch" / "hybrid_parallel.py"
# Plain SGD steps from the same start: no LR scaling or warmup, so every run takes the same LR.
STEPS = ["--epochs", "1", "--max-steps", "8", "--no-progress", "--lr-scaling", "none",
         "--warmup-epochs", "0"]
pytestmark = pytest.mark.multiprocess


def run_single(tmp: Path, name: str, batch: int, *extra: str) -> dict:
    """The MNIST recipe in one process: the whole model, the global batch."""
    out = tmp / name
    proc = subprocess.run([str(BIN / "python"), str(MNIST), *STEPS, "--batch-size", str(batch),
                           "--checkpoint-dir", str(out / "ckpt"), "--metrics-file",
                           str(out / "m.jsonl"), *extra], cwd=tmp, env=job_env(),
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return final_record(out / "m.jsonl")


def run_hybrid(tmp: Path, name: str, np: int, *flags: str, check: bool = True):
    out = tmp / name
    proc = mpirun(np, [HYBRID, *STEPS, "--checkpoint-dir", out / "ckpt", "--metrics-file",
                       out / "m.jsonl", *flags], cwd=tmp, extra=["--oversubscribe"], check=check)
    return proc, (final_record(out / "m.jsonl") if check else None)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    """One process, global batch 32, 8 steps: the weights every layout must reach."""
    return run_single(tmp_path_factory.mktemp("single"), "single", 32)


@pytest.mark.parametrize("stages, replicas, micro", [(2, 2, 1), (2, 2, 4), (2, 1, 4), (4, 1, 3)],
                         ids=["S2xR2", "S2xR2-M4", "S2xR1-M4", "S4xR1-M3"])
def test_hybrid_equals_one_process_with_the_global_batch(tmp_path, reference, stages, replicas,
                                                         micro):
    proc, final = run_hybrid(tmp_path, "hybrid", stages * replicas, "--stages", str(stages),
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


def test_hybrid_resumes_on_another_layout(tmp_path):
    """Checkpoints hold the whole model and optimizer by name: a 2x2 run's first epoch,
    continued as 4 stages x 1 replica, ends where 2 epochs in one process end."""
    two = ["--epochs", "2", "--max-steps", "1000", "--lr-decay", "none"]  # no decay: epochs 1 and 2 alike
    run_hybrid(tmp_path, "run", 4, "--stages", "2", "--batch-size", "16", *two, "--epochs", "1")
    proc, final = run_hybrid(tmp_path, "run", 4, "--stages", "4", "--batch-size", "32", *two)
    assert "resumed from" in proc.stdout and "(epoch 1, step 44)" in proc.stdout
    single = run_single(tmp_path, "single", 32, *two)
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
    proc, _ = run_hybrid(tmp_path, "bad", np, *flags, check=False)
    assert proc.returncode != 0
    assert proc.stderr.count(message) == np, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr


def test_more_stages_than_layers_is_an_error():
    from collections import OrderedDict

    from torch import nn

    from common.config import ConfigError
    from common.pipeline import partition

    model = nn.Sequential(OrderedDict(a=nn.Linear(2, 2), act=nn.ReLU(), b=nn.Linear(2, 2)))
    with pytest.raises(ConfigError, match="--stages 3 is more than the model's 2 layers"):
        partition(model, 3)


def test_partition_keeps_order_and_balances_layers_with_parameters():
    from common.pipeline import partition
    from recipes.pytorch.mnist import Net

    net = Net()
    assert partition(net, 1) == [list(dict(net.named_children()))]
    assert partition(net, 2) == [["conv1", "relu1", "conv2", "relu2", "pool", "flatten"],
                                 ["fc1", "relu3", "fc2"]]
    assert partition(net, 4) == [["conv1", "relu1"], ["conv2", "relu2", "pool", "flatten"],
                                 ["fc1", "relu3"], ["fc2"]]


def test_hybrid_needs_an_mpi_launch(tmp_path):
    from conftest import horovodrun

    proc = horovodrun(2, [HYBRID, *STEPS, "--checkpoint-dir", ""], cwd=tmp_path, check=False)
    assert proc.returncode != 0
    assert "error: the pipeline (hybrid_parallel.py) needs an MPI launch" in proc.stderr
