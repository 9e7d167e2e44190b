"""Fast by default: the runtime settings the core chooses, no per-step host reads, TF --amp, the bench."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
import yaml
from conftest import BIN, HANG_GUARD_S, HELPERS, MNIST, ROOT, horovodrun, job_env, mpirun

from common.runtime import (
    apply_runtime_settings,
    cgroup_cpu_quota,
    cpu_cores,
    launched_local_size,
    runtime_settings,
)


def test_settings_follow_the_host_and_the_controller():
    # A CPU host under MPI: ranks waiting in MPI yield their core; the cycle time stays Horovod's.
    assert runtime_settings(local_size=2, cores=2, on_gpu=False) == {"OMPI_MCA_mpi_yield_when_idle": "1"}
    assert runtime_settings(local_size=1, cores=16, on_gpu=False) == {"OMPI_MCA_mpi_yield_when_idle": "1"}
    # Under Gloo there is no MPI; a CPU host negotiates less often than Horovod's default 1 ms.
    gloo = runtime_settings(local_size=2, cores=2, on_gpu=False, controller="gloo")
    assert list(gloo) == ["HOROVOD_CYCLE_TIME"] and float(gloo["HOROVOD_CYCLE_TIME"]) > 1
    # GPU hosts keep Horovod's cycle time (a step is short there); under MPI they yield only when
    # every core has a worker.
    assert runtime_settings(local_size=8, cores=64, on_gpu=True) == {}
    assert runtime_settings(local_size=8, cores=8, on_gpu=True) == {"OMPI_MCA_mpi_yield_when_idle": "1"}
    assert runtime_settings(local_size=8, cores=8, on_gpu=True, controller="gloo") == {}


def test_a_value_in_the_environment_always_wins():
    env = {"HOROVOD_CYCLE_TIME": "3.5"}
    used = apply_runtime_settings({"HOROVOD_CYCLE_TIME": "10", "OMPI_MCA_mpi_yield_when_idle": "1"}, env)
    assert env == {"HOROVOD_CYCLE_TIME": "3.5", "OMPI_MCA_mpi_yield_when_idle": "1"}
    assert used == {"HOROVOD_CYCLE_TIME": "3.5 (environment)", "OMPI_MCA_mpi_yield_when_idle": "1 (core)"}


def test_local_size_comes_from_the_launcher():
    assert launched_local_size({}) == 1
    assert launched_local_size({"HOROVOD_LOCAL_SIZE": "4"}) == 4  # horovodrun
    assert launched_local_size({"OMPI_COMM_WORLD_LOCAL_SIZE": "3"}) == 3  # Open MPI's mpirun
    assert launched_local_size({"MPI_LOCALNRANKS": "2", "HOROVOD_LOCAL_SIZE": "x"}) == 2  # MPICH


def _cgroup(tmp_path, proc_line, files):
    """A fake cgroup mount (files: path under it -> text) and /proc/self/cgroup (proc_line)."""
    for rel, text in files.items():
        (tmp_path / "fs" / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "fs" / rel).write_text(text)
    (tmp_path / "proc").write_text(proc_line + "\n")
    return str(tmp_path / "fs"), str(tmp_path / "proc")


@pytest.mark.parametrize("proc_line, files, quota", [
    # cgroup v2: the process's own folder, or an ancestor's smaller limit
    ("0::/job", {"job/cpu.max": "150000 100000"}, 1.5),
    ("0::/a/b", {"a/cpu.max": "100000 100000", "a/b/cpu.max": "max 100000"}, 1.0),
    ("0::/", {"cpu.max": "max 100000"}, None),
    # cgroup v1 in a container without a cgroup namespace: the host's path does not exist there,
    # the mount's root is the container's own cgroup (what Docker gave each container here)
    ("4:cpu,cpuacct:/docker/abc", {"cpu,cpuacct/cpu.cfs_quota_us": "100000",
                                   "cpu,cpuacct/cpu.cfs_period_us": "100000"}, 1.0),
    ("4:cpu,cpuacct:/", {"cpu/cpu.cfs_quota_us": "-1", "cpu/cpu.cfs_period_us": "100000"}, None),
    ("9:name=systemd:/", {}, None),
])
def test_the_cgroup_cpu_quota_is_read_from_v1_and_v2(tmp_path, proc_line, files, quota):
    assert cgroup_cpu_quota(*_cgroup(tmp_path, proc_line, files)) == quota


def test_a_cpu_quota_caps_the_cores_the_threads_are_sized_for(tmp_path):
    cores = len(os.sched_getaffinity(0))
    assert cpu_cores(*_cgroup(tmp_path, "0::/", {})) == cores
    # 0.5 of a core still gets one thread; a quota above the affinity does not raise it
    assert cpu_cores(*_cgroup(tmp_path / "half", "0::/", {"cpu.max": "50000 100000"})) == 1
    assert cpu_cores(*_cgroup(tmp_path / "big", "0::/", {"cpu.max": f"{cores * 400000} 100000"})) == cores


@pytest.mark.multiprocess
@pytest.mark.parametrize("launch", ["horovodrun --gloo", "mpirun", "mpirun, yours"])
def test_a_launch_shows_and_saves_the_settings_it_ran_with(tmp_path, launch, monkeypatch):
    monkeypatch.delenv("OMPI_MCA_mpi_yield_when_idle", raising=False)
    monkeypatch.delenv("HOROVOD_CYCLE_TIME", raising=False)
    args = [MNIST, "--epochs", "1", "--max-steps", "2", "--checkpoint-dir", tmp_path / "ckpt"]
    if launch == "mpirun":
        proc = mpirun(2, args, cwd=tmp_path)
        expected = {"OMPI_MCA_mpi_yield_when_idle": "1 (core)"}
    elif launch == "mpirun, yours":
        monkeypatch.setenv("OMPI_MCA_mpi_yield_when_idle", "0")  # the user's: kept, and said so
        proc = mpirun(2, args, cwd=tmp_path, extra=["-x", "OMPI_MCA_mpi_yield_when_idle"])
        expected = {"OMPI_MCA_mpi_yield_when_idle": "0 (environment)"}
    else:
        proc = horovodrun(2, [*args, "--threads-per-worker", "1"], cwd=tmp_path)
        expected = {"HOROVOD_CYCLE_TIME": "5 (core)"}
    cores = len(os.sched_getaffinity(0))
    expected["threads_per_worker"] = ("1 (--threads-per-worker)" if launch.startswith("horovodrun") else
                                      f"{max(cores // 2, 1)} (core: {cores} cores / 2 worker(s))")
    lines = [ln for ln in proc.stdout.splitlines() if "runtime settings:" in ln]
    assert len(lines) == 1 and lines[0].endswith(
        "runtime settings: " + ", ".join(f"{k}={v}" for k, v in expected.items())), lines
    saved = yaml.safe_load((tmp_path / "ckpt" / "config.yaml").read_text())
    assert saved["runtime_settings"] == expected


def host_reads(framework: str, steps: int, *extra: str) -> tuple[int, int]:
    """(reads inside train steps, reads in the whole run) of a one-worker MNIST run."""
    proc = subprocess.run([str(BIN / "python"), str(HELPERS / "host_reads.py"), framework, str(steps),
                           *extra], cwd=ROOT, env=job_env(), capture_output=True, text=True,
                          timeout=HANG_GUARD_S)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["steps"] == steps
    reads = result["reads"]
    return reads.pop("in_train_step", 0), sum(reads.values())


@pytest.mark.parametrize("framework", ["torch", "tf", "keras"])
def test_train_steps_read_nothing_back_to_the_host(framework):
    """The train step keeps its counters on the device: no read inside it, and a run's reads do
    not grow with its steps (the epoch's end reads the counters; stop signals are agreed every
    few short steps, not each). A read per step would show in both."""
    in_steps, few = host_reads(framework, 4)
    in_steps_many, many = host_reads(framework, 40)
    assert in_steps == in_steps_many == 0
    if framework != "keras":  # tf-keras's fit itself reads its steps_per_execution every step
        assert many - few < 40 // 2, (few, many)
    in_steps_sync, many_sync = host_reads(framework, 40, "--sync-every-step")
    # Stop-signal agreements are timed (about four a second), so two runs may differ by one or two.
    assert in_steps_sync == 40 and many_sync >= many + 40 - 3, (many, many_sync)


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_tf_mixed_precision_trains_with_fp32_weights(policy):
    """What --amp picks on a GPU, forced on this CPU: fp32 weights, low-precision compute, loss
    scaling for fp16 only, and the loss goes down."""
    proc = subprocess.run([str(BIN / "python"), str(HELPERS / "tf_mixed_precision.py"), policy, "30"],
                          cwd=ROOT, env=job_env(), capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    assert r["weight_dtypes"] == ["float32"] and r["compute_dtype"] == policy.split("_")[1]
    assert (r["optimizer"] == "LossScaleOptimizer") == (policy == "mixed_float16")
    first, last = sum(r["losses"][:5]) / 5, sum(r["losses"][-5:]) / 5
    assert last < 0.8 * first, r["losses"]
    assert r["notices"] == []


@pytest.mark.multiprocess
def test_tf_amp_on_cpu_is_a_notice(tmp_path):
    proc = horovodrun(1, [ROOT / "recipes" / "tensorflow" / "mnist.py", "--epochs", "1", "--max-steps", "2",
                          "--amp"], cwd=tmp_path)
    assert "note: --amp ignored: no GPU, training in fp32" in proc.stdout


@pytest.mark.multiprocess
def test_bench_runs_every_row_and_writes_them(tmp_path):
    """`make bench` with tiny settings: every row measured, the table, JSON and chart written."""
    out = tmp_path / "bench"
    proc = subprocess.run(
        [str(BIN / "python"), "-m", "benchmarks.bench", "--np", "2", "--model", "resnet18",
         "--tf-model", "MobileNetV2", "--image-size", "32", "--batch-size", "2", "--warmup", "1",
         "--iters", "2", "--batches-per-iter", "1", "--cifar-steps", "3", "--cifar-batch-size", "4",
         "--rounds", "1", "--out", str(out)],
        cwd=ROOT, env=job_env(), capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-3000:]
    result = json.loads((out / "bench.json").read_text())
    rows = {r["name"]: r for r in result["rows"]}
    assert set(rows) == {
        "ceiling: plain PyTorch x N side by side", "horovodrun (default)", "horovodrun --gloo",
        "mpirun", "torchrun DDP (gloo)", "ceiling: plain TensorFlow x N side by side",
        "horovodrun TensorFlow (default)", "CIFAR recipe, np=1", "CIFAR recipe, np=N"}
    assert all(r["rate"] > 0 and len(r["rounds"]) == 1 and not r["error"] for r in rows.values())
    for name in ("horovodrun (default)", "horovodrun --gloo", "mpirun"):
        assert rows[name]["of_ceiling"] > 0 and rows[name]["vs_ddp"] > 0
    assert rows["horovodrun TensorFlow (default)"]["of_ceiling"] > 0
    assert rows["CIFAR recipe, np=N"]["scaling_efficiency"] > 0
    assert result["fastest"] in rows and (out / "bench.png").stat().st_size > 1000
    assert "| horovodrun (default) |" in proc.stdout


@pytest.mark.multiprocess
@pytest.mark.parametrize("launcher,recipe", [("horovodrun", "recipes/pytorch/mnist.py"),
                                             ("mpirun", "recipes/tensorflow/mnist.py")],
                         ids=["pytorch-horovodrun", "tensorflow-mpirun"])
def test_the_scaling_report_runs_with_tiny_settings(tmp_path, launcher, recipe):
    out = tmp_path / "report"
    proc = subprocess.run(
        [str(BIN / "python"), "-m", "benchmarks.scaling", "--np", "1,2", "--rounds", "1",
         "--launcher", launcher, "--out", str(out), "--", recipe, "--epochs", "1", "--max-steps",
         "6"], cwd=ROOT, env=job_env(), capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((out / "scaling.json").read_text())
    rows = {r["workers"]: r for r in result["rows"]}
    assert set(rows) == {1, 2} and all(r["rate"] > 0 and not r["error"] for r in rows.values())
    assert rows[1]["speedup"] == 1.0 and rows[2]["efficiency"] == pytest.approx(
        rows[2]["rate"] / (2 * rows[1]["rate"]))
    assert result["threads_per_worker"] == str(max(1, cpu_cores() // 2))  # at every count
    if "pytorch" in recipe:  # PyTorch splits out the allreduce wait; TensorFlow does not
        assert 0 < rows[2]["comm_share"] < 1
    else:
        assert rows[2]["comm_share"] is None
    assert "| 2 |" in (out / "scaling.md").read_text()
    assert (out / "scaling.png").stat().st_size > 10_000
