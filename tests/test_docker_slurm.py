"""Docker images, compose cluster and SLURM script: linted, pinned like CI, dry-run; where a Docker
engine runs, the image is built and the cluster run for real (docker/harness.sh); the SLURM
script's mpirun path also runs for real on this machine (no SLURM here)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import yaml
from conftest import BIN, MNIST, ROOT, final_record, job_env

from common.doctor import pinned_versions

DOCKER = ROOT / "docker"
DOCKERFILES = sorted(DOCKER.glob("Dockerfile.*"))
SBATCH = ROOT / "recipes" / "slurm" / "horovod.sbatch"


def instructions(dockerfile) -> list[str]:
    """The Dockerfile's instructions, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]


def test_both_images_exist():
    assert [p.name for p in DOCKERFILES] == ["Dockerfile.cpu", "Dockerfile.gpu"]


def test_hadolint_has_no_findings():
    proc = subprocess.run([str(BIN / "hadolint"), *map(str, DOCKERFILES)], capture_output=True,
                          text=True)
    assert proc.returncode == 0 and proc.stdout == "", proc.stdout + proc.stderr
    # Every ignore carries its reason in the comment lines right above it.
    for path in DOCKERFILES:
        lines = path.read_text().splitlines()
        for i, line in enumerate(lines):
            if "hadolint ignore" in line:
                assert lines[i - 1].startswith("#") and len(lines[i - 1]) > 20, (path, line)


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_image_builds_with_the_ci_setup_step_and_pins(path):
    steps = instructions(path)
    runs = [s for s in steps if s.startswith("RUN ")]
    setup_runs = [s for s in runs if "bash setup/setup.sh" in s]
    assert len(setup_runs) == 1, runs  # the one setup step, as `make setup` runs it in CI
    assert any(s.startswith("COPY versions.env") for s in steps)
    assert any(re.match(r"COPY setup/ setup/", s) for s in steps)
    # No second install recipe: nothing pip-installs or names a pinned version by hand.
    text = " ".join(steps)
    assert not re.search(r"pip3? install", text), "frameworks must come from setup.sh"
    for key, version in pinned_versions().items():
        if key.endswith("_VERSION") and key != "PYTHON_MIN":
            assert version not in text, (key, version)
    assert "python -m common.doctor" in setup_runs[0]  # the image checks its own build
    assert steps[-1].startswith("CMD ") and "recipes/pytorch/" in steps[-1]
    assert any(re.match(r"USER 1000", s) for s in steps)  # trains as a non-root user


def test_cpu_image_uses_ci_python_and_cpu_flavour():
    steps = instructions(DOCKER / "Dockerfile.cpu")
    base = next(s for s in steps if s.startswith("FROM "))
    assert base == f"FROM python:{sys.version_info[0]}.{sys.version_info[1]}-slim-bookworm"
    assert "SETUP_FLAVOR=cpu" in " ".join(steps)


def test_gpu_image_matches_torch_cuda_and_builds_nccl():
    import torch

    steps = instructions(DOCKER / "Dockerfile.gpu")
    base = next(s for s in steps if s.startswith("FROM "))
    m = re.match(r"FROM nvidia/cuda:(\d+\.\d+)\.\d+-cudnn-devel-", base)
    assert m, base
    assert torch.version.cuda == m.group(1)  # the pinned torch's CUDA build
    setup = next(s for s in steps if "setup/setup.sh" in s)
    assert "SETUP_FLAVOR=gpu" in setup
    script = (ROOT / "setup" / "setup.sh").read_text()
    assert "HOROVOD_GPU_OPERATIONS=NCCL" in script and 'NEEDED+=(NCCL)' in script


def test_compose_cluster_runs_horovodrun_over_the_images_ssh():
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    services = compose["services"]
    assert set(services) == {"launcher", "worker"}
    for svc in services.values():
        assert svc["build"] == {"context": "..", "dockerfile": "docker/Dockerfile.cpu"}
    ssh_user = (DOCKER / "ssh-user.sh").read_text()
    port = re.search(r'"Port (\d+)"', ssh_user).group(1)
    assert f'"  Port {port}"' in ssh_user  # the client config uses the port sshd listens on
    assert services["worker"]["command"][-1] == "/home/hvd/.ssh/sshd_config"
    assert '$ssh_dir/sshd_config' in ssh_user and 'ssh_dir=/home/hvd/.ssh' in ssh_user
    launch = services["launcher"]["command"][-1]
    hosts = re.search(r"horovodrun -np (\d+) -H (\S+) -p (\d+)", launch)
    assert hosts, launch
    assert hosts.group(2) == "launcher:1,worker:1" and hosts.group(1) == "2"
    assert hosts.group(3) == port
    assert services["launcher"]["depends_on"]["worker"]["condition"] == "service_healthy"
    subprocess.run(["bash", "-n", str(DOCKER / "ssh-user.sh")], check=True)
    # Healthy once sshd listens: it writes the pid file ssh-user.sh names (a TCP probe instead
    # made sshd log a failed handshake every 2 s).
    pid_file = re.search(r'"PidFile (\S+)"', ssh_user).group(1).replace("$ssh_dir", "/home/hvd/.ssh")
    for svc in services.values():
        assert svc["healthcheck"]["test"] == ["CMD", "test", "-s", pid_file]
        # each node gets its share of the host's cores, which the core sizes its threads by
        assert svc["cpus"] == "${NODE_CPUS:-1}"


def test_build_context_is_only_what_the_images_copy():
    rules = [ln for ln in (ROOT / ".dockerignore").read_text().splitlines() if ln and ln[0] != "#"]
    assert rules[0] == "*"  # everything else (the venv, runs/, .git) stays out of the context
    allowed = {r[1:].rstrip("/") for r in rules if r.startswith("!")}
    copied = set()
    for path in DOCKERFILES:
        for step in instructions(path):
            if step.startswith("COPY "):
                copied.update(src.rstrip("/") for src in step.split()[1:-1])
    assert copied == allowed


def test_cpu_image_takes_the_torch_index_as_a_build_argument():
    steps = instructions(DOCKER / "Dockerfile.cpu")
    assert "ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" in steps  # a user's default
    assert 'TORCH_INDEX_URL="$TORCH_INDEX_URL"' in next(s for s in steps if "setup/setup.sh" in s)


def docker_engine() -> bool:
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.mark.docker
@pytest.mark.skipif(not docker_engine(), reason="no Docker engine runs here (make docker-test starts one)")
def test_docker_harness_builds_trains_and_runs_the_cluster():
    """make docker-test: every check of docker/harness.sh passes (about 15 minutes on a fresh
    engine, a few with the build cached)."""
    proc = subprocess.run(["bash", str(DOCKER / "harness.sh")], cwd=ROOT, capture_output=True,
                          text=True, timeout=3600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    for check in ("demo and doctor: ok", "horovodrun -H launcher:1,worker:1 (compose up): ok",
                  "mpirun -H launcher:1,worker:1: ok (one rank in each container; TensorFlow",
                  "horovodrun: worker container killed", "mpirun: worker container killed",
                  "ok: image built"):
        assert check in out, (check, out[-4000:])
    assert len(re.findall(r"(?m)^  resumed from runs/kill-", out)) == 2, out[-4000:]


def sbatch(*args, env=None, check=True):
    proc = subprocess.run(["bash", str(SBATCH), *map(str, args)], cwd=ROOT, env=env or job_env(),
                          capture_output=True, text=True)
    if check:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def slurm_env(tmp_path, nodes, ntasks, per_node, **extra):
    fake = tmp_path / "bin"
    fake.mkdir(exist_ok=True)
    (fake / "scontrol").write_text(  # "show hostnames" lists the nodes; "requeue" is logged
        f'#!/bin/sh\nif [ "$1" = requeue ]; then echo "$@" >> {fake}/requeued; exit 0; fi\n'
        + "".join(f"echo {n}\n" for n in nodes))
    (fake / "scontrol").chmod(0o755)
    env = job_env()
    env.update({"PATH": f"{fake}{os.pathsep}{env['PATH']}", "SLURM_JOB_NODELIST": "node[01-02]",
                "SLURM_NTASKS": str(ntasks), "SLURM_NTASKS_PER_NODE": per_node, **extra})
    return env


def test_sbatch_header_asks_one_task_per_gpu():
    header = dict(re.findall(r"^#SBATCH --([\w-]+)=(\S+)", SBATCH.read_text(), re.M))
    assert {"nodes", "ntasks-per-node", "gres", "time"} <= header.keys()
    assert header["gres"] == f"gpu:{header['ntasks-per-node']}"


def test_sbatch_dry_run_srun_and_mpirun_commands(tmp_path):
    env = slurm_env(tmp_path, ["node01", "node02"], 8, "4(x2)", DRY_RUN="1",
                    NCCL_SOCKET_IFNAME="ib0")
    srun = sbatch("recipes/pytorch/mnist.py", "--epochs", "3", env=env).stdout
    assert "srun --mpi=pmix --cpu-bind=none --kill-on-bad-exit=1 python " \
           "recipes/pytorch/mnist.py --epochs 3" in srun
    mpi = sbatch("recipes/tensorflow/mnist.py", env=env | {"LAUNCHER": "mpirun"}).stdout
    assert "mpirun -np 8 -H node01:4,node02:4 -bind-to none -map-by slot" in mpi
    assert "-x NCCL_SOCKET_IFNAME" in mpi and "-x LD_LIBRARY_PATH" in mpi
    assert mpi.rstrip().endswith("python recipes/tensorflow/mnist.py")


def test_sbatch_bad_input_is_one_line(tmp_path):
    proc = sbatch("recipes/pytorch/nope.py", check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: recipe recipes/pytorch/nope.py not found (submit from " \
                                  "the repository root)"
    proc = sbatch(MNIST, env=job_env() | {"LAUNCHER": "ssh"}, check=False)
    assert proc.returncode == 2 and proc.stderr.strip().startswith("error: LAUNCHER must be")


@pytest.mark.multiprocess
def test_sbatch_mpirun_path_trains_here(tmp_path):
    """The script's own mpirun command, for a fake 1-node, 2-task allocation on this machine."""
    root = "--allow-run-as-root " if os.geteuid() == 0 else ""
    env = slurm_env(tmp_path, ["localhost"], 2, "2", LAUNCHER="mpirun", VENV=str(BIN.parent),
                    MPIRUN_ARGS=root + "-mca pml ob1 -mca btl ^openib")
    metrics = tmp_path / "metrics.jsonl"
    sbatch(MNIST, "--epochs", "1", "--max-steps", "8", "--no-progress", "--checkpoint-dir",
           tmp_path / "ckpt", "--metrics-file", metrics, env=env)
    final = final_record(metrics)
    assert final["world_size"] == 2 and final["checkpoint"]


def test_sbatch_header_asks_for_a_warning_signal_and_requeue():
    text = SBATCH.read_text()
    assert re.search(r"^#SBATCH --signal=B:USR1@\d+$", text, re.M)
    assert re.search(r"^#SBATCH --requeue$", text, re.M)
    assert re.search(r"^#SBATCH --open-mode=append$", text, re.M)


@pytest.mark.multiprocess
def test_sbatch_stops_at_a_checkpoint_on_the_time_limit_signal_and_requeues(tmp_path):
    """SLURM's warning signal (SIGUSR1 to the batch script) reaches both ranks through mpirun;
    they stop at one step with a checkpoint, exit 75, and the script requeues the job; the
    requeued run resumes and finishes."""
    import signal
    import time

    from conftest import HANG_GUARD_S, read_records

    root = "--allow-run-as-root " if os.geteuid() == 0 else ""
    env = slurm_env(tmp_path, ["localhost"], 2, "2", LAUNCHER="mpirun", VENV=str(BIN.parent),
                    MPIRUN_ARGS=root + "-mca pml ob1 -mca btl ^openib", SLURM_JOB_ID="4242")
    metrics = tmp_path / "metrics.jsonl"
    flags = [MNIST, "--epochs", "30", "--batch-size", "8", "--no-progress", "--checkpoint-dir",
             tmp_path / "ckpt", "--metrics-file", metrics]
    job = subprocess.Popen(["bash", str(SBATCH), *map(str, flags)], cwd=ROOT, env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           start_new_session=True)
    try:
        deadline = time.monotonic() + HANG_GUARD_S
        while not (metrics.exists() and read_records(metrics)):
            assert job.poll() is None, job.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.2)
        job.send_signal(signal.SIGUSR1)  # what --signal=B:USR1@180 sends
        out, err = job.communicate(timeout=120)
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
    assert job.returncode == 75, out[-3000:] + err[-3000:]
    assert "horovod.sbatch: got SIGUSR1" in out
    assert "stopped by signals on 2 ranks after step" in out or "stopped by SIGUSR1" in out
    assert (tmp_path / "bin" / "requeued").read_text().split() == ["requeue", "4242"]
    step = int(out.split("after step ")[1].split()[0])
    proc = sbatch(*flags, env=env)  # the requeued job: same script, same flags
    assert f"step {step})" in proc.stdout  # resumed from the stop's checkpoint
    assert final_record(metrics)["step"] == 30 * 89
