"""make compare-strategies (benchmarks/strategies.py) with tiny settings."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.support import (
    HANG_GUARD_S,
    ROOT,
    job_env,
)

# Runs beside other tests: it asserts what is measured and written, never how fast (the
# numbers themselves belong to `make bench` on an idle machine).


def test_compare_strategies_smoke(tmp_path):
    """`make compare-strategies` with tiny settings: every row measured, counted and plotted."""

    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.strategies", "--epochs", "1",
                           "--steps", "2", "--only", "allreduce", "--only", "ps async K=2",
                           "--out", str(out)], cwd=ROOT, env=job_env(), capture_output=True,
                          text=True, timeout=HANG_GUARD_S)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((out / "strategies.json").read_text())
    rows = {r["name"]: r for r in result["rows"]}
    assert set(rows) == {"allreduce (Horovod)", "ps async K=2"}
    resnet18_bytes = 11_181_642 * 4  # torchvision's ResNet-18 with 10 classes, fp32
    ring = rows["allreduce (Horovod)"]["bytes_sent_per_step_by_rank"]
    assert ring == pytest.approx([2 * 3 / 4 * resnet18_bytes] * 4)
    ps = rows["ps async K=2"]
    assert ps["roles"] == ["worker"] * 3 + ["server"]
    assert ps["bytes_sent_per_step_by_rank"][:3] == [resnet18_bytes] * 3  # each worker's push
    assert ps["bytes_sent_per_step_by_rank"][3] == 3 * resnet18_bytes  # the server's pulls
    for r in rows.values():
        assert r["resnet_samples_per_sec"] > 0 and 0 <= r["cnn_val_accuracy"] <= 1
        assert 0 < r["comm_share"] < 1 and len(r["cnn_curve"]) == 1
    assert rows["allreduce (Horovod)"]["vs_allreduce"] == 1.0
    assert "| ps async K=2 |" in proc.stdout
    assert (out / "strategies.png").stat().st_size > 10_000
