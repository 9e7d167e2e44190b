"""make docker-test (docker/harness.sh) where a Docker engine runs; skipped otherwise (CI starts no
engine)."""

from __future__ import annotations

import re
import subprocess

import pytest

from tests.support import (
    ROOT,
)

DOCKER = ROOT / "docker"


def docker_engine() -> bool:
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.mark.docker
@pytest.mark.skipif(not docker_engine(), reason="no Docker engine runs here (make docker-test starts one)")
def test_docker_harness_builds_trains_and_runs_the_cluster():
    """make docker-test: every check of docker/harness.sh passes (about 15 minutes on a fresh
    engine, plus 9 for the shaped links; 12 with the build cached)."""
    proc = subprocess.run(["bash", str(DOCKER / "harness.sh")], cwd=ROOT, capture_output=True,
                          text=True, timeout=3600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    for check in ("demo and doctor: ok", "horovodrun -H launcher:1,worker:1 (compose up): ok",
                  "mpirun -H launcher:1,worker:1: ok (one rank in each container; TensorFlow",
                  "horovodrun: worker container killed", "mpirun: worker container killed",
                  "shaped links: predicted within 10 points of measured at",
                  "ok: image built"):
        assert check in out, (check, out[-4000:])
    assert len(re.findall(r"(?m)^  resumed from runs/kill-", out)) == 2, out[-4000:]
