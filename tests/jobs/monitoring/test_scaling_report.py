"""python -m benchmarks.scaling with tiny settings, PyTorch under horovodrun and TensorFlow under mpirun."""

from __future__ import annotations

import json
import subprocess

import pytest

from common.world.runtime import cpu_cores
from tests.support import (
    BIN,
    HANG_GUARD_S,
    ROOT,
    job_env,
)

# Runs beside other tests: it asserts what is measured and written, never how fast (the
# numbers themselves belong to `make bench` on an idle machine).


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
