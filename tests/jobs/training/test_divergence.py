"""The divergence guard on real 2-worker jobs of every MNIST recipe: stop with the good checkpoints
kept, or roll back and go on."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support import (
    MNIST,
    copy_run,
    final_record,
    horovodrun,
    load_checkpoint,
    max_abs_diff,
    read_records,
)


def flags(script: Path, out: Path) -> list:
    return [script, "--checkpoint-dir", out / "ckpt", "--metrics-file", out / "m.jsonl",
            "--checkpoint-steps", "5", "--batch-size", "64"]


@pytest.fixture(scope="module")
def sound_epoch(tmp_path_factory):
    """``sound_epoch(recipe)``: a folder where the recipe trained 1 sound epoch on 2 workers
    (11 steps, a checkpoint every 5), run once per recipe; tests resume from copies of it."""
    runs: dict[str, Path] = {}

    def get(recipe: str) -> Path:
        if recipe not in runs:
            out = tmp_path_factory.mktemp("sound") / "run"
            horovodrun(2, [*flags(MNIST.parents[1] / recipe, out), "--epochs", "1"],
                       cwd=out.parent)
            runs[recipe] = out
        return runs[recipe]

    return get


@pytest.mark.parametrize("recipe", ["pytorch/mnist.py", "tensorflow/mnist.py",
                                    "tensorflow/keras_mnist.py"])
def test_divergence_stops_every_rank_and_keeps_good_checkpoints(tmp_path, recipe, sound_epoch):
    out = copy_run(sound_epoch(recipe), tmp_path / "run")
    flags_ = flags(MNIST.parents[1] / recipe, out)
    good = {p.name: p.read_bytes() for p in (out / "ckpt").glob("ckpt-*")}
    assert good
    proc = horovodrun(2, [*flags_, "--epochs", "3", "--base-lr", "1e4"], cwd=tmp_path,
                      check=False)
    assert proc.returncode != 0
    assert "resuming with settings that differ from the saved run's: base_lr 0.05 -> 10000.0" \
        in proc.stdout
    errors = [line for line in proc.stderr.splitlines()
              if "error: training diverged: the loss " in line]
    assert len(errors) == 2, proc.stderr[-3000:]  # one line from each rank
    assert {p.name: p.read_bytes() for p in (out / "ckpt").glob("ckpt-*")} == good
    assert "Traceback" not in proc.stdout and "<stderr>:Traceback" not in proc.stderr


@pytest.mark.parametrize("recipe", ["pytorch/mnist.py", "tensorflow/keras_mnist.py"])
def test_rollback_reloads_the_last_good_checkpoint_on_every_rank_and_goes_on(tmp_path, recipe,
                                                                             sound_epoch):
    """A run resumed at LR 1e4 diverges, rolls back to the checkpoint it started from with the
    LR x1e-5, and ends as a run resumed from that checkpoint at LR 0.1 (1e4 x 1e-5) does."""
    script = MNIST.parents[1] / recipe
    wild = copy_run(sound_epoch(recipe), tmp_path / "wild")  # 11 steps, sound
    calm = copy_run(sound_epoch(recipe), tmp_path / "calm")
    proc = horovodrun(2, [*flags(script, wild), "--epochs", "3", "--base-lr", "1e4",
                          "--on-divergence", "rollback", "--rollback-lr-factor", "1e-5"],
                      cwd=tmp_path)
    rollbacks = [x for x in proc.stdout.splitlines() if "training diverged: " in x]
    assert len(rollbacks) == 1, proc.stdout[-3000:]  # one was enough
    assert "rollback 1 of 3: back to " in rollbacks[0] and "s000000011" in rollbacks[0]
    assert "the LR now x1e-05" in rollbacks[0]
    assert "Traceback" not in proc.stdout and "<stderr>:Traceback" not in proc.stderr
    horovodrun(2, [*flags(script, calm), "--epochs", "3", "--base-lr", "0.1"], cwd=tmp_path)
    a, b = final_record(wild / "m.jsonl"), final_record(calm / "m.jsonl")
    assert [r["epoch"] for r in read_records(wild / "m.jsonl") if r["type"] == "epoch"] == [1, 2, 3]
    assert a["step"] == b["step"] == 3 * 11  # 1,438 samples / (2 x 64) per step
    assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-4)
    if recipe.startswith("pytorch"):
        assert max_abs_diff(load_checkpoint(a["checkpoint"])["model"],
                            load_checkpoint(b["checkpoint"])["model"]) < 1e-5
