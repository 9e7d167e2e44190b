"""Launching under Open MPI's mpirun: the same numbers as horovodrun, MPI sub-communicators (--mpi-
groups) and K-fold groups."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.support import (
    BIN,
    MNIST,
    ROOT,
    SHORT,
    final_record,
    horovodrun,
    job_env,
    load_checkpoint,
    max_abs_diff,
    mpirun,
)


def outputs(tmp, name):
    out = tmp / name
    return out, ["--checkpoint-dir", out / "ckpt", "--metrics-file", out / "metrics.jsonl"]


@pytest.mark.parametrize("framework", ["pytorch", "tensorflow"])
def test_mpirun_runs_a_recipe_as_horovodrun_does(framework, launched):
    """The session's short runs (tests/jobs/conftest.py, launched) by mpirun and horovodrun
    --gloo: the same numbers."""
    by_mpi, by_gloo = launched(framework, "mpirun"), launched(framework, "gloo")
    mpi = final_record(by_mpi.out / "metrics.jsonl")
    gloo = final_record(by_gloo.out / "metrics.jsonl")
    assert mpi["world_size"] == gloo["world_size"] == 2 and mpi["step"] == gloo["step"] == 12
    # Same data, seeds and steps; a 2-way average is exact either way, so the runs agree.
    for key in ("train_loss", "val_loss", "val_accuracy"):
        assert mpi[key] == pytest.approx(gloo[key], abs=1e-6), key
    assert by_mpi.stdout.count("final: val accuracy") == 1  # rank 0 alone reports


def test_mpi_groups_are_independent_one_worker_trainings(tmp_path):
    """One `mpirun -np 2 --mpi-groups 2` is two 1-worker runs: seeds 42 and 43, own folders."""
    out, flags = outputs(tmp_path, "groups")
    proc = mpirun(2, [MNIST, *SHORT, *flags, "--mpi-groups", "2"], cwd=tmp_path)
    assert proc.stdout.count("final: val accuracy") == 2  # each group's rank 0
    groups = [final_record(out / f"group{k}" / "metrics.jsonl") for k in (0, 1)]
    assert [g["world_size"] for g in groups] == [1, 1]
    for k, seed in ((0, 42), (1, 43)):
        alone, alone_flags = outputs(tmp_path, f"alone{seed}")
        subprocess.run([str(BIN / "python"), str(MNIST), *map(str, SHORT), *map(str, alone_flags),
                        "--seed", str(seed)], cwd=tmp_path, env=job_env(), check=True,
                       capture_output=True)
        grouped = load_checkpoint(groups[k]["checkpoint"])
        single = load_checkpoint(final_record(alone / "metrics.jsonl")["checkpoint"])
        assert grouped["world_size"] == 1
        assert max_abs_diff(grouped["model"], single["model"]) < 1e-6, k
        assert str(out / "ckpt" / f"group{k}") in groups[k]["checkpoint"]
    g0, g1 = (load_checkpoint(g["checkpoint"])["model"] for g in groups)
    assert max_abs_diff(g0, g1) > 1e-3  # different seeds, different models


def test_k_fold_groups_equal_separate_fold_runs_and_summarize(tmp_path):
    """`mpirun -np 3 --folds 3 --mpi-groups 3` trains fold k in group k: each fold's model
    equals a separate `--fold k` run's, and world rank 0 writes the summary of all three."""
    out, flags = outputs(tmp_path, "folds")
    proc = mpirun(3, [MNIST, *SHORT, *flags, "--folds", "3", "--mpi-groups", "3"], cwd=tmp_path,
                  extra=["--oversubscribe"])
    assert proc.stdout.count("3-fold cross-validation: val accuracy") == 1
    finals = [final_record(out / f"fold{k}" / "metrics.jsonl") for k in range(3)]
    for k in range(3):
        assert f"fold {k} of 3" in proc.stdout
        alone, alone_flags = outputs(tmp_path, "alone")
        subprocess.run([str(BIN / "python"), str(MNIST), *map(str, SHORT),
                        *map(str, alone_flags), "--folds", "3", "--fold", str(k)],
                       cwd=tmp_path, env=job_env(), check=True, capture_output=True)
        single = final_record(alone / f"fold{k}" / "metrics.jsonl")
        assert str(alone / "ckpt" / f"fold{k}") in single["checkpoint"]
        grouped = load_checkpoint(finals[k]["checkpoint"])["model"]
        assert max_abs_diff(grouped, load_checkpoint(single["checkpoint"])["model"]) < 1e-6, k
        assert finals[k]["val_accuracy"] == pytest.approx(single["val_accuracy"], abs=1e-9)
    summary = json.loads((out / "metrics.jsonl").read_text())
    accs = [f["val_accuracy"] for f in finals]
    assert summary["type"] == "folds" and summary["folds"] == 3
    assert summary["val_accuracy"] == pytest.approx(accs)
    assert summary["val_accuracy_mean"] == pytest.approx(sum(accs) / 3)
    mean = sum(accs) / 3
    assert summary["val_accuracy_std"] == pytest.approx((sum((a - mean) ** 2 for a in accs) / 3) ** 0.5)
    assert len(set(accs)) > 1  # different validation folds, different results


@pytest.mark.parametrize("recipe", ["mnist.py", "keras_mnist.py"])
def test_tensorflow_recipes_validate_on_their_fold(tmp_path, recipe):
    proc = subprocess.run([str(BIN / "python"), str(ROOT / "recipes" / "tensorflow" / recipe),
                           *SHORT, "--max-steps", "3", "--folds", "3", "--fold", "2",
                           "--checkpoint-dir", "", "--metrics-file", str(tmp_path / "m.jsonl")],
                          cwd=tmp_path, env=job_env(), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # the digits' 1,438 training samples: folds of 480, 479, 479; fold 2 validates
    assert "959 train / 479 val samples (digits-train fold 2 of 3: train)" in proc.stdout
    assert (tmp_path / "fold2" / "m.jsonl").exists()


def test_mpi_groups_without_mpi_launch_is_one_line_error(tmp_path):
    proc = horovodrun(2, [MNIST, *SHORT, "--mpi-groups", "2"], cwd=tmp_path, check=False)
    assert proc.returncode != 0
    assert "error: --mpi-groups needs an MPI launch (mpirun, or horovodrun --mpi)" in proc.stderr
    # The recipe's own error is one line (horovodrun then adds its own traceback of the exit).
    assert f"File \"{ROOT / 'common'}" not in proc.stderr and "Traceback" not in proc.stdout


def test_mpi_groups_must_divide_the_world(tmp_path):
    proc = mpirun(2, [MNIST, *SHORT, "--mpi-groups", "3"], cwd=tmp_path, check=False)
    assert proc.returncode != 0
    # Both ranks say it (mpirun may interleave their lines), and nothing else goes wrong.
    message = "error: --mpi-groups 3 must divide the number of MPI processes (2)"
    assert proc.stderr.count(message) == 2, proc.stderr
    assert proc.stderr.count("error:") == 2, proc.stderr
    assert "Traceback" not in proc.stderr
