"""The two recipe templates of docs/own-recipe.md, run exactly as the page gives them, alone and on
2 workers under the README's horovodrun, and the first screens the page shows, line by line."""

from __future__ import annotations

import re

import pytest

from tests.support import (
    BIN,
    LAUNCHERS,
    epoch_records,
    final_record,
    job_env,
    page_block,
    run_job,
    shows_like_the_page,
)


def template(tmp_path, name: str):
    """The page's template ``name`` saved alone in a folder outside the project."""
    path = tmp_path / name
    path.write_text(page_block(f"template: {name}") + "\n")
    return path


def run(cmd: list, folder, workers: int):
    env = job_env()
    env.pop("PYTHONPATH", None)  # as a user runs it: the core comes from the environment
    launcher = LAUNCHERS["mpi"] if workers == 2 else []
    return run_job([*launcher, BIN / "python", *cmd], folder, check=True, env=env)


def test_the_pytorch_template_alone_then_resumed_on_two_workers(tmp_path):
    script = template(tmp_path, "wine_torch.py")
    alone = run([script, "--epochs", "2"], tmp_path, workers=1)
    assert alone.stdout.startswith("fresh run: no checkpoint in runs/wine_torch/checkpoints\n")
    assert "runtime settings:" not in alone.stdout  # one process: none apply
    # the same folder on 2 workers: resumed, and the page's resumed screen
    two = run([script, "--epochs", "3"], tmp_path, workers=2)
    # (the name's step and the line's agree; this world takes 4 steps an epoch, not 8)
    assert two.stdout.startswith("resumed from runs/wine_torch/checkpoints/ckpt-e00002-s000000016.pt "
                                 "(2 epoch(s) done, saved at step 16, step 8 at 4 steps/epoch "
                                 "now)\n"), two.stdout[:300]
    shows_like_the_page(two.stdout, "resumed")
    records = epoch_records(tmp_path / "runs/wine_torch/metrics.jsonl")
    assert [r["epoch"] for r in records] == [1, 2, 3] and records[-1]["world_size"] == 2
    assert final_record(tmp_path / "runs/wine_torch/metrics.jsonl")["val_accuracy"] > 0.8
    # another --run-dir is a fresh run there, with the page's fresh screen
    # (a progress line at every step: the output is a pipe, as under any launcher)
    fresh = run([script, "--epochs", "2", "--run-dir", "runs/second", "--progress-every", "0.001"],
                tmp_path, workers=2)
    shows_like_the_page(fresh.stdout, "fresh")
    assert ("config: epochs=2 run_dir=runs/second progress_every=0.001 (the rest: wine_torch's "
            "defaults") in fresh.stdout
    progress = [ln for ln in fresh.stdout.splitlines() if ln.startswith("  epoch ")]
    assert progress and all(re.fullmatch(r"  epoch [12]/2: step [1-4]/4 \| loss [\d.]+ \| [\d,]+ "
                                         r"samples/s \| ETA epoch \d+:\d\d, run \d+:\d\d", ln)
                            for ln in progress), progress
    assert (tmp_path / "runs/second/checkpoints/config.yaml").exists()
    assert "s since the start)" in fresh.stdout.splitlines()[-1]


@pytest.mark.parametrize("workers", [1, 2])
def test_the_keras_template(tmp_path, workers):
    """Alone and on 2 workers; compiled with SparseCategoricalAccuracy (not "accuracy"), its
    train accuracy is measured, and tf-keras says nothing of the core's callback."""
    script = template(tmp_path, "wine_keras.py")
    proc = run([script, "--epochs", "2"], tmp_path, workers=workers)
    if workers == 2:
        shows_like_the_page(proc.stdout, "keras")
    assert "is slow compared to the batch time" not in proc.stdout + proc.stderr
    records = epoch_records(tmp_path / "runs/wine_keras/metrics.jsonl")
    assert len(records) == 2 and all(0 < r["train_accuracy"] <= 1 for r in records), records
    assert records[-1]["world_size"] == workers
