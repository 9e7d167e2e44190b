"""The runtime settings a real launch runs with: shown once, saved in config.yaml, the user's
environment winning."""

from __future__ import annotations

import os

import pytest
import yaml

from tests.support import (
    MNIST,
    mpirun,
)


@pytest.mark.parametrize("launch", ["horovodrun --gloo", "horovodrun", "mpirun", "mpirun, yours"])
def test_a_launch_shows_and_saves_the_settings_it_ran_with(tmp_path, launch, monkeypatch,
                                                           launched):
    """horovodrun (MPI, with --threads-per-worker 1), horovodrun --gloo and mpirun: the
    session's short PyTorch runs (tests/jobs/conftest.py, launched), made with none of the
    settings in the environment; "mpirun, yours" runs here with the user's own value."""
    if launch == "mpirun, yours":
        monkeypatch.setenv("OMPI_MCA_mpi_yield_when_idle", "0")  # the user's: kept, and said so
        monkeypatch.delenv("HOROVOD_CYCLE_TIME", raising=False)
        args = [MNIST, "--epochs", "1", "--max-steps", "2", "--checkpoint-dir", tmp_path / "ckpt"]
        stdout = mpirun(2, args, cwd=tmp_path, extra=["-x", "OMPI_MCA_mpi_yield_when_idle"]).stdout
        folder = tmp_path
        expected = {"OMPI_MCA_mpi_yield_when_idle": "0 (environment)"}
    else:
        job = launched("pytorch", {"horovodrun --gloo": "gloo"}.get(launch, launch))
        stdout, folder = job.stdout, job.out
        expected = {"horovodrun --gloo": {"HOROVOD_CYCLE_TIME": "5 (core)",  # the watchdog
                                          "HOROVOD_GLOO_TIMEOUT_SECONDS": "330 (core)"},  # first
                    "horovodrun": {"OMPI_MCA_mpi_yield_when_idle": "1 (core)",  # one host: Open
                                   "OMPI_MCA_btl": "^openib,ofi (core)"},  # MPI's libfabric out
                    "mpirun": {"OMPI_MCA_mpi_yield_when_idle": "1 (core)"}}[launch]
    cores = len(os.sched_getaffinity(0))
    expected["threads_per_worker"] = ("1 (--threads-per-worker)" if launch == "horovodrun" else
                                      f"{max(cores // 2, 1)} (core: {cores} cores / 2 worker(s))")
    lines = [ln for ln in stdout.splitlines() if "runtime settings:" in ln]
    assert len(lines) == 1 and lines[0].endswith(
        "runtime settings: " + ", ".join(f"{k}={v}" for k, v in expected.items())), lines
    saved = yaml.safe_load((folder / "ckpt" / "config.yaml").read_text())
    assert saved["runtime_settings"] == expected
