"""Tests of common/world/quiet.py in one process: which start-up lines are noise, the caught descriptor 2,
the mpirun command without tags."""

from __future__ import annotations

import os

from common.world.quiet import RAW_OUTPUT_ENV, is_noise, quiet_stderr, untagged

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
