"""No train step reads a tensor back to the host (a GPU sync): counted in one-worker runs of PyTorch,
the TF custom loop and Keras."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.support import (
    BIN,
    HANG_GUARD_S,
    HELPERS,
    ROOT,
    job_env,
)


def host_reads(framework: str, steps: int, *extra: str) -> tuple[int, int]:
    """(reads inside train steps, reads in the whole run) of a one-worker MNIST run, the
    stop-signal agreement's aside (it runs on a clock: its count follows the machine's speed)."""
    proc = subprocess.run([str(BIN / "python"), str(HELPERS / "host_reads.py"), framework, str(steps),
                           *extra], cwd=ROOT, env=job_env(), capture_output=True, text=True,
                          timeout=HANG_GUARD_S)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["steps"] == steps
    reads = result["reads"]
    reads.pop("agreement", None)
    reads.pop("keras", None)
    return reads.pop("in_train_step", 0), sum(reads.values())


@pytest.mark.parametrize("framework", ["torch", "tf", "keras"])
def test_train_steps_read_nothing_back_to_the_host(framework):
    """The train step keeps its counters on the device: no read inside it, and a run's reads do
    not grow with its steps (the epoch's end reads the counters). A read per step would show in
    both."""
    in_steps, few = host_reads(framework, 4)
    in_steps_many, many = host_reads(framework, 40)
    assert in_steps == in_steps_many == 0
    assert many - few < 40 // 2, (few, many)
    in_steps_sync, many_sync = host_reads(framework, 40, "--sync-every-step")
    assert in_steps_sync == 40 and many_sync == many + 40, (many, many_sync)
