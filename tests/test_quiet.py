"""The first screen of every documented launch shows only what the recipe says: no TensorFlow
start-up lines, no launcher tags on rank 0's output; real warnings and errors still show, and
HOROVOD_RECIPES_RAW_OUTPUT=1 shows everything."""

from __future__ import annotations

import os
import subprocess

import pytest
from conftest import BIN, HANG_GUARD_S, ROOT, job_env

from common.quiet import RAW_OUTPUT_ENV, is_noise, quiet_stderr, untagged

TF_MNIST = ROOT / "recipes" / "tensorflow" / "mnist.py"
FLAGS = ["--epochs", "1", "--max-steps", "3", "--checkpoint-dir", "", "--no-progress"]
LAUNCHES = {
    "horovodrun": [str(BIN / "horovodrun"), "-np", "2"],
    "horovodrun-gloo": [str(BIN / "horovodrun"), "-np", "2", "--gloo"],
    "mpirun": ["mpirun", *(["--allow-run-as-root"] if os.geteuid() == 0 else []), "-np", "2",
               "-bind-to", "none", "-map-by", "slot", "-x", "PATH", "-x", "PYTHONPATH"],
    "one-process": [],
}
SAMPLE = [
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    "I0000 00:00:1796153072.789243    4295 port.cc:153] oneDNN custom operations are on. You may",
    "I0000 00:00:1796153072.790813    4295 cudart_stub.cc:31] Could not find cuda drivers on "
    "your machine, GPU will not be used.",
    "I0000 00:00:1796153072.879533    4295 cpu_feature_guard.cc:227] This TensorFlow binary is "
    "optimized to use available CPU instructions in performance-critical operations.",
    "To enable the following instructions: AVX2 FMA, in other operations, rebuild TensorFlow "
    "with the appropriate compiler flags.",
]
CUINIT = ("E0000 00:00:1796153954.197818    7843 cuda_platform.cc:52] failed call to cuInit: "
          "INTERNAL: CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)")


def test_only_known_start_up_lines_are_noise():
    assert all(is_noise(line) for line in SAMPLE)
    assert is_noise(CUINIT, gpu_host=False) and not is_noise(CUINIT, gpu_host=True)
    for real in ("W0000 00:00:1796153072.1 4295 port.cc:153] something went wrong",
                 "E0000 00:00:17961.1 4295 cuda_dnn.cc:8579] Unable to register cuDNN factory",
                 "error: --epochs must be at least 1, got 0", "WARNING: disk almost full"):
        assert not is_noise(real)


def test_quiet_stderr_drops_noise_and_keeps_the_rest_in_order(capfd, monkeypatch):
    with quiet_stderr():
        os.write(2, ("\n".join([SAMPLE[0], "W real warning", SAMPLE[1], "E real error"]) + "\n")
                 .encode())
    assert capfd.readouterr().err == "W real warning\nE real error\n"
    monkeypatch.setenv(RAW_OUTPUT_ENV, "1")
    with quiet_stderr():
        os.write(2, (SAMPLE[1] + "\n").encode())
    assert capfd.readouterr().err == SAMPLE[1] + "\n"


def test_only_the_tag_option_leaves_the_mpirun_command():
    cmd = "mpirun --allow-run-as-root --tag-output -np 2 -x PATH python x.py --tag-output-x"
    assert untagged(cmd) == "mpirun --allow-run-as-root -np 2 -x PATH python x.py --tag-output-x"


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


@pytest.mark.multiprocess
@pytest.mark.parametrize("name", list(LAUNCHES))
def test_the_first_screen_of_a_launch_is_the_recipe_s_own(tmp_path, name):
    lines = [ln for ln in launch(name, tmp_path).splitlines() if ln.strip()]
    assert lines[0].startswith("config: recipe=tensorflow/mnist"), lines[:10]
    assert not [ln for ln in lines if is_noise(ln) or "cuInit" in ln], lines[:10]
    assert not [ln for ln in lines if "<stdout>:" in ln], lines[:10]
    assert lines[-1].startswith("final: val accuracy")


@pytest.mark.multiprocess
def test_the_raw_switch_shows_everything(tmp_path):
    text = launch("horovodrun", tmp_path, raw=True)
    assert "[1,0]<stdout>:config: recipe=tensorflow/mnist" in text  # mpirun's tags
    assert "oneDNN custom operations are on" in text  # the launcher's and workers' start-up


def test_the_doctor_says_only_its_report():
    proc = subprocess.run([str(BIN / "python"), "-m", "common.doctor"], cwd=ROOT, env=job_env(),
                          capture_output=True, text=True, timeout=300)
    out = (proc.stdout + proc.stderr).splitlines()
    assert out[0].startswith("python ") and not [ln for ln in out if is_noise(ln)], out[:8]
