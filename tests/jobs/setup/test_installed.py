"""The Horovod that make setup built and installed: its build, the pinned versions, a second setup is a
no-op."""

from __future__ import annotations

import re
import subprocess

from common.doctor import pinned_versions
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


def test_horovod_has_pytorch_tensorflow_mpi_gloo():
    proc = run([str(BIN / "horovodrun"), "--check-build"], env=job_env())
    assert proc.returncode == 0
    for name in ("PyTorch", "TensorFlow", "MPI", "Gloo"):
        assert re.search(rf"\[X\] {name}\b", proc.stdout), proc.stdout


def test_installed_versions_are_the_pinned_ones():
    pins = pinned_versions()
    import horovod
    import tensorflow as tf
    import torch

    assert torch.__version__.split("+")[0] == pins["TORCH_VERSION"]
    assert tf.__version__ == pins["TENSORFLOW_VERSION"]
    assert horovod.__version__ == pins["HOROVOD_VERSION"]
