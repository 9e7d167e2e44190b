"""Tests of the setup step: idempotent, one-line failures, one pin file, and the Horovod it built."""

import re
import subprocess
from pathlib import Path

from conftest import BIN, ROOT, job_env

from common.doctor import pinned_versions


def run(cmd, **kw):
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, **kw)


def test_second_setup_is_a_no_op():
    proc = run(["bash", "setup/setup.sh"], env=job_env())
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().startswith("setup: up to date")


def test_failed_step_is_one_line_and_non_zero(tmp_path):
    env = job_env() | {"PYTHON": "/bin/false-python-does-not-exist", "VENV": str(tmp_path / "v")}
    proc = run(["bash", "setup/setup.sh"], env=env)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("setup: step 'python' failed:"), proc.stderr


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


def test_versions_live_only_in_versions_env():
    pins = [v for k, v in pinned_versions().items()
            if re.match(r"^(TORCH|TENSORFLOW|HOROVOD|MPI4PY)_VERSION$", k)]
    assert len(pins) == 4
    for path in [ROOT / "Makefile", ROOT / ".ci" / "run", *Path(ROOT / "setup").rglob("*.sh")]:
        text = path.read_text()
        for version in pins:
            assert f"=={version}" not in text and f"={version}\n" not in text, (path, version)


def test_bad_knob_is_one_line_before_any_step(tmp_path):
    for knob, value, allowed in (("SETUP_FLAVOR", "tpu", "cpu or gpu"),
                                 ("SETUP_FRAMEWORKS", "conda", "pinned or system"),
                                 ("SETUP_MPI", "yes", "0 or 1")):
        env = job_env() | {knob: value, "VENV": str(tmp_path / "v")}
        proc = run(["bash", "setup/setup.sh"], env=env)
        assert proc.returncode == 2 and proc.stdout == ""
        assert proc.stderr.strip().splitlines() == [
            f"setup: {knob} must be {allowed}, not '{value}' (see the knobs at the top of "
            "setup/setup.sh)"]
    assert not (tmp_path / "v").exists()
