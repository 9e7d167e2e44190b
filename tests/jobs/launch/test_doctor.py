"""Tests of common/launch/doctor.py as a user runs it: this build's report, a planted mismatched mpirun, no
mpirun, only its report on screen."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from common.launch.doctor import pinned_versions
from common.world.quiet import is_noise
from tests.support import (
    BIN,
    ROOT,
    job_env,
)


def doctor(*args, env=None):
    return subprocess.run([sys.executable, "-m", "common.launch.doctor", *args], cwd=ROOT,
                          env=env or job_env(), capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def doctor_text():
    """``python -m common.launch.doctor`` as a user runs it: one run, read by two tests."""
    return doctor()


def test_doctor_reports_this_build(doctor_text):
    import torch

    proc = doctor("--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    pins = pinned_versions()
    hv = report["horovod"]
    assert hv["version"] == pins["HOROVOD_VERSION"]
    assert hv["frameworks"] == ["PyTorch", "TensorFlow"]
    assert hv["controllers"] == ["MPI", "Gloo"]
    assert "NCCL" not in hv["tensor_operations"] and {"MPI", "Gloo"} <= set(hv["tensor_operations"])
    # The libmpi mpi4py loads is the very file Horovod is linked against, and mpirun agrees.
    assert hv["mpi4py_same_library"] is True
    assert hv["mpi_library_files"] == report["mpi4py"]["library_files"]
    mpirun_version = subprocess.run(["mpirun", "--version"], capture_output=True, text=True).stdout
    release = mpirun_version.split()[3]  # "mpirun (Open MPI) 4.1.4"
    assert f"Open MPI v{release}" in report["mpi4py"]["library"]
    assert report["frameworks"]["torch"].split("+")[0] == pins["TORCH_VERSION"]
    assert report["frameworks"]["tensorflow"] == pins["TENSORFLOW_VERSION"]
    assert len(report["gpus"]) == torch.cuda.device_count()
    assert all(p["level"] == "warning" for p in report["problems"])
    text = doctor_text
    assert text.returncode == 0
    assert "controllers  MPI, Gloo" in text.stdout and "(same as Horovod's)" in text.stdout
    assert text.stdout.rstrip().splitlines()[-1].startswith("doctor: ok")


def test_doctor_finds_an_mpirun_of_another_mpi(tmp_path):
    """A different MPI first on PATH is an error with a fix, and a non-zero exit."""
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "mpirun").write_text("#!/bin/sh\necho 'mpirun (Open MPI) 5.0.3'\n")
    (fake / "mpirun").chmod(0o755)
    env = job_env()
    env["PATH"] = f"{fake}{os.pathsep}{env['PATH']}"
    proc = doctor(env=env)
    assert proc.returncode == 1
    assert "error: mpirun is 'mpirun (Open MPI) 5.0.3' but mpi4py loads 'Open MPI v4.1.4" in proc.stdout
    fix = proc.stdout.split("error: mpirun is", 1)[1].splitlines()[1]
    assert fix.strip().startswith("fix: put one MPI first on PATH")
    assert proc.stdout.rstrip().splitlines()[-1].startswith("doctor: problems found")


def test_doctor_without_mpirun_warns_with_the_install_command(tmp_path):
    env = job_env()
    env["PATH"] = str(BIN)  # the venv only: no mpirun
    proc = doctor("--json", env=env)
    report = json.loads(proc.stdout)
    assert report["mpirun"]["path"] is None
    [warning] = [p for p in report["problems"] if "mpirun is not on PATH" in p["problem"]]
    assert "apt-get install openmpi-bin" in warning["fix"]


def test_the_doctor_says_only_its_report(doctor_text):
    out = (doctor_text.stdout + doctor_text.stderr).splitlines()
    assert out[0].startswith("python ") and not [ln for ln in out if is_noise(ln)], out[:8]
