"""TensorFlow mixed precision forced on this CPU (what --amp picks on a GPU), and --amp on CPU as a notice."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.support import (
    BIN,
    HANG_GUARD_S,
    HELPERS,
    ROOT,
    horovodrun,
    job_env,
)


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_tf_mixed_precision_trains_with_fp32_weights(policy):
    """What --amp picks on a GPU, forced on this CPU: fp32 weights, low-precision compute, loss
    scaling for fp16 only, and the loss goes down."""
    proc = subprocess.run([str(BIN / "python"), str(HELPERS / "tf_mixed_precision.py"), policy, "30"],
                          cwd=ROOT, env=job_env(), capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    assert r["weight_dtypes"] == ["float32"] and r["compute_dtype"] == policy.split("_")[1]
    assert (r["optimizer"] == "LossScaleOptimizer") == (policy == "mixed_float16")
    first, last = sum(r["losses"][:5]) / 5, sum(r["losses"][-5:]) / 5
    assert last < 0.8 * first, r["losses"]
    assert r["notices"] == []


def test_tf_amp_on_cpu_is_a_notice(tmp_path):
    proc = horovodrun(1, [ROOT / "recipes" / "tensorflow" / "mnist.py", "--epochs", "1", "--max-steps", "2",
                          "--amp"], cwd=tmp_path)
    assert "note: --amp ignored: no GPU, training in fp32" in proc.stdout
