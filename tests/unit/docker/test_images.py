"""Tests of docker/: the images, compose file and build context, linted and read (no engine needed;
tests/jobs/docker runs them)."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
import yaml

from common.launch.doctor import pinned_versions
from tests.support import (
    BIN,
    ROOT,
)

DOCKER = ROOT / "docker"

DOCKERFILES = sorted(DOCKER.glob("Dockerfile.*"))


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
    assert "python -m common.launch.doctor" in setup_runs[0]  # the image checks its own build
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
