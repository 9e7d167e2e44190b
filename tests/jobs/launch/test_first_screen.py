"""The first screen of every documented launch shows only what the recipe says: no TensorFlow start-up
lines, no launcher tags on rank 0's output (common/quiet.py); HOROVOD_RECIPES_RAW_OUTPUT=1 shows
everything."""

from __future__ import annotations

import os
import subprocess

import pytest

from common.quiet import RAW_OUTPUT_ENV, is_noise
from tests.support import (
    BIN,
    HANG_GUARD_S,
    TF_MNIST,
    job_env,
)

FLAGS = ["--epochs", "1", "--max-steps", "3", "--checkpoint-dir", "", "--no-progress"]

LAUNCHES = {
    "horovodrun": [str(BIN / "horovodrun"), "-np", "2"],
    "horovodrun-gloo": [str(BIN / "horovodrun"), "-np", "2", "--gloo"],
    "mpirun": ["mpirun", *(["--allow-run-as-root"] if os.geteuid() == 0 else []), "-np", "2",
               "-bind-to", "none", "-map-by", "slot", "-x", "PATH", "-x", "PYTHONPATH"],
    "one-process": [],
}


def launch(name: str, tmp_path, raw: bool = False) -> str:
    env = job_env()
    env.pop(RAW_OUTPUT_ENV, None)
    if raw:
        env[RAW_OUTPUT_ENV] = "1"
    proc = subprocess.run([*LAUNCHES[name], str(BIN / "python"), str(TF_MNIST), *FLAGS],
                          cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=HANG_GUARD_S)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr


@pytest.mark.parametrize("name", list(LAUNCHES))
def test_the_first_screen_of_a_launch_is_the_recipe_s_own(tmp_path, name):
    lines = [ln for ln in launch(name, tmp_path).splitlines() if ln.strip()]
    assert lines[0].startswith("config: recipe=tensorflow/mnist"), lines[:10]
    assert not [ln for ln in lines if is_noise(ln) or "cuInit" in ln], lines[:10]
    assert not [ln for ln in lines if "<stdout>:" in ln], lines[:10]
    assert lines[-1].startswith("final: val accuracy")


def test_the_raw_switch_shows_everything(tmp_path):
    text = launch("horovodrun", tmp_path, raw=True)
    assert "[1,0]<stdout>:config: recipe=tensorflow/mnist" in text  # mpirun's tags
    # TensorFlow's start-up lines show, unfiltered: here from the launcher's own build check,
    # which imports TensorFlow (the workers set TF_CPP_MIN_LOG_LEVEL=2, and which lines TensorFlow
    # prints at all depends on the CPU and on finding CUDA's libraries: oneDNN's line only where
    # it turns oneDNN on, cuInit's only where it looks for a GPU)
    said = [ln.split("<stderr>:", 1)[-1] for ln in text.splitlines()]
    assert [ln for ln in said if is_noise(ln, gpu_host=False)], text[-3000:]
