"""Other ways to distribute training, run for real: hybrid (pipeline x data) parallelism and
parameter servers (sync and async).

Each strategy must train exactly what synchronous data parallelism (or one process) trains
with the same global batch: the tests compare the weights after a few SGD steps."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import (
    BIN,
    HANG_GUARD_S,
    HELPERS,
    MNIST,
    ROOT,
    final_record,
    job_env,
    load_checkpoint,
    max_abs_diff,
    mpirun,
    read_records,
    worker_pids,
)

HYBRID = ROOT / "recipes" / "pytorch" / "hybrid_parallel.py"
PS = ROOT / "recipes" / "pytorch" / "parameter_server.py"
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


def run_recipe(recipe: Path, tmp: Path, name: str, np: int, *flags: str, check: bool = True):
    """``mpirun -np N recipe STEPS flags``: (the job, its final record if it succeeded)."""
    out = tmp / name
    proc = mpirun(np, [recipe, *STEPS, "--checkpoint-dir", out / "ckpt", "--metrics-file",
                       out / "m.jsonl", *flags], cwd=tmp, extra=["--oversubscribe"], check=check)
    return proc, (final_record(out / "m.jsonl") if check else None)


def run_hybrid(tmp: Path, name: str, np: int, *flags: str, check: bool = True):
    return run_recipe(HYBRID, tmp, name, np, *flags, check=check)


def run_ps(tmp: Path, name: str, np: int, *flags: str, check: bool = True):
    return run_recipe(PS, tmp, name, np, *flags, check=check)


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


# --- parameter servers -----------------------------------------------------------------------

@pytest.mark.parametrize("np, servers", [(3, 1), (4, 2)], ids=["W2xP1", "W2xP2"])
def test_sync_parameter_server_equals_synchronous_data_parallelism(tmp_path, reference, np,
                                                                   servers):
    """2 workers with batch 16 pushing to the servers, synchronously, train what the MNIST
    recipe trains with the global batch of 32 (and so what Horovod's 2-worker run trains)."""
    proc, final = run_ps(tmp_path, "ps", np, "--servers", str(servers), "--batch-size", "16")
    assert f"2 worker(s), {servers} server(s), sync" in proc.stdout
    assert max_abs_diff(load_checkpoint(final["checkpoint"])["model"],
                        load_checkpoint(reference["checkpoint"])["model"]) < 1e-5
    assert final["val_loss"] == pytest.approx(reference["val_loss"], abs=1e-5)
    assert final["staleness_max"] == 0 and final["lead_max"] == 0
    # Each worker pushes the whole gradient (the MNIST CNN's 151,306 fp32 numbers) every step;
    # the servers send each worker its share of the parameters back.
    grads = 151_306 * 4
    assert final["roles"] == ["worker"] * 2 + ["server"] * servers
    assert final["bytes_sent_per_step_by_rank"][:2] == [grads, grads]
    assert sum(final["bytes_sent_per_step_by_rank"][2:]) == 2 * grads


def test_parameter_server_resumes_on_other_servers(tmp_path):
    """A sync run's first epoch on 1 server, continued on 2: the same as 2 epochs in one process
    (the checkpoint holds the whole model and its momentum by name)."""
    two = ["--epochs", "2", "--max-steps", "1000", "--lr-decay", "none"]
    run_ps(tmp_path, "run", 3, "--servers", "1", "--batch-size", "16", *two, "--epochs", "1")
    proc, final = run_ps(tmp_path, "run", 4, "--servers", "2", "--batch-size", "16", *two)
    assert "resumed from" in proc.stdout
    single = run_single(tmp_path, "single", 32, *two)
    assert max_abs_diff(load_checkpoint(final["checkpoint"])["model"],
                        load_checkpoint(single["checkpoint"])["model"]) < 1e-5


def run_async_with_a_slow_worker(tmp: Path, name: str, *flags: str) -> dict:
    out = tmp / name
    mpirun(4, [HELPERS / "slow_worker.py", "1", "0.02", *STEPS, "--max-steps", "60",
               "--mode", "async", "--checkpoint-dir", "", "--metrics-file", out / "m.jsonl",
               *flags], cwd=tmp, extra=["--oversubscribe"])
    return final_record(out / "m.jsonl")


@pytest.mark.parametrize("k", [0, 2])
def test_async_staleness_is_bounded_and_reported(tmp_path, k):
    """Worker 1 sleeps 20 ms a step: the other two run ahead of it by exactly --max-staleness
    steps, no more; without a bound they run further."""
    bounded = run_async_with_a_slow_worker(tmp_path, f"k{k}", "--max-staleness", str(k))
    assert bounded["lead_max"] == k
    workers = 3
    # between a worker's pull and its push, each other worker pushes at most 2K+1 times
    assert 0 < bounded["staleness_max"] <= (workers - 1) * (2 * k + 1)
    assert bounded["staleness_mean"] > 0 and bounded["mode"] == "async"
    if k == 2:
        free = run_async_with_a_slow_worker(tmp_path, "free")
        assert free["lead_max"] > k and free["max_staleness"] is None


@pytest.mark.parametrize("np, flags, message", [
    (2, ["--servers", "2"], "error: --servers 2 leaves no worker in a job of 2 rank(s); use at most 1"),
    (2, ["--mode", "sync", "--max-staleness", "2"],
     "error: --max-staleness applies to --mode async only"),
    (2, ["--use-adasum"], "error: --use-adasum does not apply to parameter servers"),
], ids=["servers>=world", "staleness-in-sync", "gradient-flags"])
def test_bad_parameter_server_settings_are_one_line_errors(tmp_path, np, flags, message):
    proc, _ = run_ps(tmp_path, "bad", np, *flags, check=False)
    assert proc.returncode != 0
    assert proc.stderr.count(message) == np, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr


def test_more_servers_than_tensors_is_an_error():
    from common.config import ConfigError
    from common.param_server import shard_names
    from recipes.pytorch.mnist import Net

    assert shard_names(Net(), 2) == [["fc1.weight"], ["conv1.weight", "conv1.bias", "conv2.weight",
                                                      "conv2.bias", "fc1.bias", "fc2.weight",
                                                      "fc2.bias"]]
    with pytest.raises(ConfigError, match="--servers 9 is more than the model's 8"):
        shard_names(Net(), 9)


@pytest.mark.parametrize("victim", ["worker", "server"])
def test_a_dead_worker_or_server_ends_the_job(tmp_path, victim, fault_record):
    """SIGKILL one rank mid-run (async, so the others are busy talking to it): the job ends
    with an error instead of waiting for it forever."""
    metrics = tmp_path / "m.jsonl"
    root = ["--allow-run-as-root"] if os.geteuid() == 0 else []
    cmd = ["mpirun", *root, "--oversubscribe", "-np", "3", "-bind-to", "none", "-x", "PYTHONPATH",
           "-x", "PATH", str(BIN / "python"), str(PS), "--mode", "async", "--epochs", "50",
           "--no-progress", "--checkpoint-dir", str(tmp_path / "ckpt"), "--metrics-file",
           str(metrics)]
    job = subprocess.Popen(cmd, cwd=tmp_path, env=job_env(), stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, start_new_session=True)
    hung = False
    try:
        deadline = time.monotonic() + HANG_GUARD_S
        while not (metrics.exists() and read_records(metrics)):  # an epoch is done
            assert job.poll() is None, job.stdout.read()
            assert time.monotonic() < deadline
            time.sleep(0.2)
        rank = "1" if victim == "worker" else "2"
        pids = worker_pids(PS, f"OMPI_COMM_WORLD_RANK={rank}")
        assert len(pids) == 1, pids
        os.kill(pids[0], signal.SIGKILL)
        try:
            output, _ = job.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            hung = True
            raise
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
        fault_record.append({"hung": hung, "lost": 0 if (tmp_path / "ckpt").exists() and any(
            p.suffix == ".pt" for p in (tmp_path / "ckpt").iterdir()) else 1})
    assert job.returncode != 0, output[-3000:]


def test_compare_strategies_smoke(tmp_path):
    """`make compare-strategies` with tiny settings: every row measured, counted and plotted."""
    import json
    import sys

    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.strategies", "--epochs", "1",
                           "--steps", "2", "--only", "allreduce", "--only", "ps async K=2",
                           "--out", str(out)], cwd=ROOT, env=job_env(), capture_output=True,
                          text=True, timeout=HANG_GUARD_S)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((out / "strategies.json").read_text())
    rows = {r["name"]: r for r in result["rows"]}
    assert set(rows) == {"allreduce (Horovod)", "ps async K=2"}
    resnet18_bytes = 11_181_642 * 4  # torchvision's ResNet-18 with 10 classes, fp32
    ring = rows["allreduce (Horovod)"]["bytes_sent_per_step_by_rank"]
    assert ring == pytest.approx([2 * 3 / 4 * resnet18_bytes] * 4)
    ps = rows["ps async K=2"]
    assert ps["roles"] == ["worker"] * 3 + ["server"]
    assert ps["bytes_sent_per_step_by_rank"][:3] == [resnet18_bytes] * 3  # each worker's push
    assert ps["bytes_sent_per_step_by_rank"][3] == 3 * resnet18_bytes  # the server's pulls
    for r in rows.values():
        assert r["resnet_samples_per_sec"] > 0 and 0 <= r["cnn_val_accuracy"] <= 1
        assert 0 < r["comm_share"] < 1 and len(r["cnn_curve"]) == 1
    assert rows["allreduce (Horovod)"]["vs_allreduce"] == 1.0
    assert "| ps async K=2 |" in proc.stdout
    assert (out / "strategies.png").stat().st_size > 10_000
