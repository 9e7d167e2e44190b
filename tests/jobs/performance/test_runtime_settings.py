"""The runtime settings a real launch runs with: shown once, saved in config.yaml, the user's
environment winning."""

from __future__ import annotations

import os

import pytest
import yaml

from tests.support import (
    BIN,
    LAUNCHERS,
    MNIST,
    horovodrun,
    mpirun,
    run_job,
)


@pytest.mark.parametrize("launch", ["horovodrun --gloo", "horovodrun", "mpirun", "mpirun, yours"])
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
    elif launch == "horovodrun":  # one host: Open MPI's libfabric transport left out too
        proc = run_job([*LAUNCHERS["mpi"], BIN / "python", *args, "--threads-per-worker", "1"],
                       tmp_path, check=True)
        expected = {"OMPI_MCA_mpi_yield_when_idle": "1 (core)", "OMPI_MCA_btl": "^openib,ofi (core)"}
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
