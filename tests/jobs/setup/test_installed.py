"""The Horovod that make setup built and installed: its build, the pinned versions, a second setup is a
no-op."""

from __future__ import annotations

import json
import re
import subprocess

from common.launch.doctor import pinned_versions
from tests.support import (
    BIN,
    ROOT,
    job_env,
)


def run(cmd, **kw):
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, **kw)


def test_second_setup_is_a_no_op():
    proc = run(["bash", "setup/setup.sh"], env=job_env())
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().startswith("setup: up to date")


def test_horovod_has_pytorch_tensorflow_mpi_gloo(tmp_path):
    proc = run([str(BIN / "horovodrun"), "--check-build"], env=job_env())
    assert proc.returncode == 0
    for name in ("PyTorch", "TensorFlow", "MPI", "Gloo"):
        assert re.search(rf"\[X\] {name}\b", proc.stdout), proc.stdout
    # setup's check (one process that imports the extensions, its checks forked from it) prints
    # the very table horovodrun does, asked afresh (an empty cache)
    env = {**job_env(), "HOROVOD_RECIPES_CACHE": str(tmp_path / "cache")}
    ours = run([str(BIN / "python"), "-m", "common.world.build_checks", "horovod.torch",
                "horovod.tensorflow"], env=env)
    assert ours.returncode == 0, ours.stderr[-3000:]
    assert ours.stdout == proc.stdout
    assert (tmp_path / "cache" / "build-checks.json").exists()


def test_installed_versions_are_the_pinned_ones():
    """Read in a process of its own: TensorFlow and torch in one process can crash on import
    (the order matters), and the test process must not depend on the tests run before it."""
    pins = pinned_versions()
    proc = run([str(BIN / "python"), "-c", "import json, horovod, tensorflow, torch; print(json.dumps("
                "[torch.__version__, tensorflow.__version__, horovod.__version__]))"], env=job_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    torch_version, tf_version, horovod_version = json.loads(proc.stdout.strip().splitlines()[-1])
    assert torch_version.split("+")[0] == pins["TORCH_VERSION"]
    assert tf_version == pins["TENSORFLOW_VERSION"]
    assert horovod_version == pins["HOROVOD_VERSION"]
