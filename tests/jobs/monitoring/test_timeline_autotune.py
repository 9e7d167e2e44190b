"""Horovod's timeline and autotuner through the core on short real runs of both frameworks (--timeline-
out, --autotune)."""

from __future__ import annotations

import subprocess

import pytest

from tests.support import (
    BIN,
    KERAS_MNIST,
    MNIST,
    ROOT,
    TF_MNIST,
    final_record,
    horovodrun,
    job_env,
    mpirun,
)

# Autotuning settles in a few steps with these (Horovod's defaults need thousands).
FAST_AUTOTUNE = {"HOROVOD_AUTOTUNE_WARMUP_SAMPLES": "0", "HOROVOD_AUTOTUNE_STEPS_PER_SAMPLE": "1",
                 "HOROVOD_AUTOTUNE_BAYES_OPT_MAX_SAMPLES": "2"}


@pytest.mark.parametrize("recipe,launch", [(MNIST, mpirun), (TF_MNIST, horovodrun),
                                           (KERAS_MNIST, mpirun)],
                         ids=["pytorch-mpirun", "tensorflow-gloo", "keras-mpirun"])
def test_timeline_and_autotune_on_a_short_real_run(tmp_path, monkeypatch, recipe, launch):
    for k, v in FAST_AUTOTUNE.items():
        monkeypatch.setenv(k, v)
    metrics, timeline = tmp_path / "m.jsonl", tmp_path / "tl" / "timeline.json"
    extra = [a for k in FAST_AUTOTUNE for a in ("-x", k)] if launch is mpirun else []
    flags = [recipe, "--epochs", "1", "--max-steps", "30", "--metrics-file", metrics,
             "--timeline-out", timeline, "--autotune", "--checkpoint-dir", ""]
    proc = mpirun(2, flags, tmp_path, extra=extra) if launch is mpirun else horovodrun(
        2, flags, tmp_path)
    final = final_record(metrics)
    tl = final["timeline"]
    assert tl["path"] == str(timeline) and timeline.exists()
    # every step allreduces every gradient; the core's own collectives are broadcasts and gathers
    assert tl["allreduces"] >= final["step"] * 4 and tl["tensors"] >= 4
    assert tl["cycles_with_work"] >= final["step"]
    assert tl["other_operations"]["BROADCAST"] >= 1
    assert tl["bytes_reduced"] > 0 and 0 < tl["fusion_fill_max"] <= 1
    assert tl["communicate_s"] > 0 and tl["negotiate_s"] > 0
    assert set(tl["last_ready_by_rank"]) <= {"0", "1"}
    assert f"timeline: {timeline}: " in proc.stdout
    tune = final["autotune"]
    assert tune["log"] == str(tmp_path / "autotune.csv") and tune["samples"] >= 1
    assert tune["chosen"]["cycle_time_ms"] > 0
    assert "autotune: " in proc.stdout
    assert "HOROVOD_AUTOTUNE=1 (--autotune)" in proc.stdout
    assert "final: val accuracy" in proc.stdout.rstrip().splitlines()[-1]  # still the last line


def test_the_synthetic_benchmarks_refuse_the_flags(tmp_path):
    proc = subprocess.run([str(BIN / "python"), ROOT / "recipes" / "pytorch" / "synthetic_benchmark.py",
                           "--timeline-out", tmp_path / "t.json"], cwd=tmp_path, env=job_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "--timeline-out does not apply to the synthetic benchmarks" in proc.stderr
