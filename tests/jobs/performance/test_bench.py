"""make bench (benchmarks/bench.py) with tiny settings: every row measured and written."""

from __future__ import annotations

import json
import subprocess

from tests.support import (
    BIN,
    HANG_GUARD_S,
    ROOT,
    job_env,
)

# Runs beside other tests: it asserts what is measured and written, never how fast (the
# numbers themselves belong to `make bench` on an idle machine).


def test_bench_runs_every_row_and_writes_them(tmp_path):
    """`make bench` with tiny settings (small models: what is measured, not how much): every row
    measured, the table, JSON and chart written."""
    out = tmp_path / "bench"
    proc = subprocess.run(
        [str(BIN / "python"), "-m", "benchmarks.bench", "--np", "2", "--model", "shufflenet_v2_x0_5",
         "--tf-model", "MobileNet", "--image-size", "32", "--batch-size", "2", "--warmup", "1",
         "--iters", "2", "--batches-per-iter", "1", "--cifar-depth", "8", "--cifar-steps", "3",
         "--cifar-batch-size", "4", "--rounds", "1", "--out", str(out),
         # (not the compile group: a cold torch.compile of the model costs minutes of CPU here;
         # --compile itself is tested in tests/jobs/training/test_compile.py)
         "--only", "pytorch", "--only", "tensorflow", "--only", "cifar", "--only", "saving",
         "--saving-model", "shufflenet_v2_x0_5", "--saving-image-size", "32",
         "--saving-batch-size", "2", "--saving-steps", "4", "--saving-every", "2"],
        cwd=ROOT, env=job_env(), capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-3000:]
    result = json.loads((out / "bench.json").read_text())
    rows = {r["name"]: r for r in result["rows"]}
    assert set(rows) == {
        "ceiling: plain PyTorch x N side by side", "horovodrun (default)", "horovodrun --gloo",
        "mpirun", "torchrun DDP (gloo)", "ceiling: plain TensorFlow x N side by side",
        "horovodrun TensorFlow (default)", "horovodrun TensorFlow, Keras 3 model.fit",
        "CIFAR recipe, np=1", "CIFAR recipe, np=N", "saving: no checkpoints",
        "saving: --checkpoint-steps 2, sync", "saving: --checkpoint-steps 2, async"}
    assert all(r["rate"] > 0 and len(r["rounds"]) == 1 and not r["error"] for r in rows.values())
    for name in ("horovodrun (default)", "horovodrun --gloo", "mpirun"):
        assert rows[name]["of_ceiling"] > 0 and rows[name]["vs_ddp"] > 0
    assert rows["horovodrun TensorFlow (default)"]["of_ceiling"] > 0
    assert rows["horovodrun TensorFlow, Keras 3 model.fit"]["of_ceiling"] > 0
    assert rows["CIFAR recipe, np=N"]["scaling_efficiency"] > 0
    assert result["fastest"] in rows and (out / "bench.png").stat().st_size > 1000
    for mode in ("sync", "async"):  # the pause per checkpoint, from the runs' final records
        row = rows[f"saving: --checkpoint-steps 2, {mode}"]
        assert row["vs_none"] > 0 and row["checkpoint_mb"] > 1
        assert 0 < row["pause_s"] <= row["pause_max_s"] and row["pause_share_of_step"] > 0
    assert rows["saving: --checkpoint-steps 2, async"]["pause_cut_vs_sync"] > 0
    assert "pause_s" not in rows["saving: no checkpoints"]
    assert "| --checkpoint-steps 2, async |" in proc.stdout
    assert "| horovodrun (default) |" in proc.stdout
