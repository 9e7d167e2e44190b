"""The first screen of every documented launch shows only what the recipe says: no TensorFlow start-up
lines, no launcher tags on rank 0's output (common/world/quiet.py); HOROVOD_RECIPES_RAW_OUTPUT=1 shows
everything."""

from __future__ import annotations

import re

import pytest

from common.world.quiet import RAW_OUTPUT_ENV, is_noise
from tests.support import (
    BIN,
    TF_MNIST,
    job_env,
    run_job,
    shows_like_the_page,
)

FLAGS = ["--epochs", "1", "--max-steps", "3", "--checkpoint-dir", "", "--no-progress"]


def launch_alone(tmp_path, raw: bool = False, launcher: list[str] = ()) -> str:
    """The TensorFlow recipe with FLAGS, launched by ``launcher`` (one process without)."""
    env = job_env()
    env.pop(RAW_OUTPUT_ENV, None)
    if raw:
        env[RAW_OUTPUT_ENV] = "1"
    proc = run_job([*launcher, BIN / "python", TF_MNIST, *FLAGS], tmp_path, check=True, env=env)
    return proc.stdout + proc.stderr


# The launches the README documents: horovodrun (MPI), horovodrun --gloo and mpirun read the
# session's short TensorFlow runs (tests/jobs/conftest.py, launched); one process runs here.
@pytest.mark.parametrize("name", ["horovodrun", "horovodrun-gloo", "mpirun", "one-process"])
def test_the_first_screen_of_a_launch_is_the_recipe_s_own(tmp_path, name, launched):
    if name == "one-process":
        text = launch_alone(tmp_path)
    else:
        job = launched("tensorflow", {"horovodrun-gloo": "gloo"}.get(name, name))
        text = job.stdout + job.stderr
    lines = [ln for ln in text.splitlines() if ln.strip()]
    # fresh or resumed first; the settings given, not the 40 at their defaults; the runtime
    # settings of a multi-worker run only
    assert lines[0].startswith("fresh run: "), lines[:10]
    config = [ln for ln in lines if ln.startswith("config: ")]
    assert len(config) == 1 and "epochs=1 " in config[0] and " max_steps=" in config[0], config
    assert config[0].endswith("(the rest: tensorflow/mnist's defaults)" if name == "one-process"
                              else "config.yaml)"), config
    assert not re.search(r"\b(recipe|seed|base_lr|momentum|lr_scaling)=", config[0]), config
    settings = [ln for ln in lines if ln.startswith("runtime settings: ")]
    assert len(settings) == (0 if name == "one-process" else 1), lines[:10]
    assert not [ln for ln in lines if is_noise(ln) or "cuInit" in ln], lines[:10]
    assert not [ln for ln in lines if "<stdout>:" in ln], lines[:10]
    assert lines[-1].startswith("final: val accuracy") and "s since the start)" in lines[-1]


def test_make_trains_first_screen_is_the_one_the_docs_show(launched):
    """docs/own-recipe.md shows `make train`'s first screen as captured; the README's launch
    (horovodrun, 2 workers) of the PyTorch recipe prints the same lines in the same order."""
    shows_like_the_page(launched("pytorch", "horovodrun").stdout, "make-train")


def test_the_raw_switch_shows_everything(tmp_path):
    text = launch_alone(tmp_path, raw=True, launcher=[str(BIN / "horovodrun"), "-np", "2"])
    assert "[1,0]<stdout>:fresh run: " in text  # mpirun's tags
    # TensorFlow's start-up lines show, unfiltered: here from the launcher's own build check,
    # which imports TensorFlow (the workers set TF_CPP_MIN_LOG_LEVEL=2, and which lines TensorFlow
    # prints at all depends on the CPU and on finding CUDA's libraries: oneDNN's line only where
    # it turns oneDNN on, cuInit's only where it looks for a GPU)
    said = [ln.split("<stderr>:", 1)[-1] for ln in text.splitlines()]
    assert [ln for ln in said if is_noise(ln, gpu_host=False)], text[-3000:]
