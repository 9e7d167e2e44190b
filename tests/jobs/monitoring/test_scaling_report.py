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


# The projection: PyTorch's over the runs' own link, measured (benchmarks.linkprobe), from the
# recipe's own step time and gradient bytes; TensorFlow's over given links and gradient MB.
PROJECT = {"pytorch": ["--project", "8,32", "--link", "measure"],
           "tensorflow": ["--project", "4,16", "--link", "1Gbit,100us", "--link", "10Gbit",
                          "--gradient-mb", "1.7"]}


@pytest.mark.parametrize("launcher,recipe", [("horovodrun", "recipes/pytorch/mnist.py"),
                                             ("mpirun", "recipes/tensorflow/mnist.py")],
                         ids=["pytorch-horovodrun", "tensorflow-mpirun"])
def test_the_scaling_report_runs_with_tiny_settings(tmp_path, launcher, recipe):
    out = tmp_path / "report"
    framework = recipe.split("/")[1]
    proc = subprocess.run(
        [str(BIN / "python"), "-m", "benchmarks.scaling", "--np", "1,2", "--rounds", "1",
         "--launcher", launcher, "--out", str(out), *PROJECT[framework], "--", recipe,
         "--epochs", "1", "--max-steps", "6"], cwd=ROOT, env=job_env(), capture_output=True,
        text=True, timeout=HANG_GUARD_S)
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
    projection = result["projection"]
    assert projection["step_s"] > 0 and projection["gradient_bytes"] > 0
    predicted = {(r["link"], r["workers"]): r["efficiency"] for r in projection["rows"]}
    assert all(0 < e <= 1 for e in predicted.values())
    report = (out / "scaling.md").read_text()
    assert "## Projection" in report and (out / "projection.png").stat().st_size > 10_000
    if framework == "pytorch":  # one link, the runs' own: measured beside predicted at N=2
        link = json.loads((out / "link.json").read_text())
        assert link["bits_per_s"] > 0 and link["workers"] == 2
        assert projection["gradient_bytes"] == 4 * 151306  # the MNIST CNN's float32 parameters
        assert {w for _, w in predicted} == {2, 8, 32}
        [beside] = projection["measured"]
        assert beside["workers"] == 2 and beside["efficiency"] == rows[2]["efficiency"]
        assert "| measured efficiency | predicted |" in report
        # the compute step: the 2-worker runs' step less their wait for the allreduce
        assert projection["compute_at"] == 2 and 0 < projection["compute_s"]
    else:  # two links given: no measured points to set beside them
        assert projection["gradient_bytes"] == 1.7e6 and projection["measured"] == []
        assert projection["compute_s"] is None  # TensorFlow's record gives no wait: the lone step
        assert {lk for lk, _ in predicted} == {"1 Gbit/s, 100 us", "10 Gbit/s"}
        assert predicted[("10 Gbit/s", 16)] >= predicted[("1 Gbit/s, 100 us", 16)]
