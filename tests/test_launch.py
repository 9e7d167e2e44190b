"""Launching: recipes under Open MPI's mpirun, MPI sub-communicators (--mpi-groups), the doctor."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import (
    BIN,
    MNIST,
    ROOT,
    final_record,
    horovodrun,
    job_env,
    load_checkpoint,
    max_abs_diff,
    mpirun,
)

from common.doctor import pinned_versions

TF_MNIST = ROOT / "recipes" / "tensorflow" / "mnist.py"
SHORT = ["--epochs", "1", "--max-steps", "12", "--batch-size", "16", "--no-progress"]
pytestmark = pytest.mark.multiprocess


def outputs(tmp, name):
    out = tmp / name
    return out, ["--checkpoint-dir", out / "ckpt", "--metrics-file", out / "metrics.jsonl"]


@pytest.mark.parametrize("recipe", [MNIST, TF_MNIST], ids=["pytorch", "tensorflow"])
def test_mpirun_runs_a_recipe_as_horovodrun_does(tmp_path, recipe):
    by_mpi, flags_mpi = outputs(tmp_path, "mpirun")
    by_gloo, flags_gloo = outputs(tmp_path, "horovodrun")
    proc = mpirun(2, [recipe, *SHORT, *flags_mpi], cwd=tmp_path)
    horovodrun(2, [recipe, *SHORT, *flags_gloo], cwd=tmp_path)
    mpi, gloo = final_record(by_mpi / "metrics.jsonl"), final_record(by_gloo / "metrics.jsonl")
    assert mpi["world_size"] == gloo["world_size"] == 2
    # Same data, seeds and steps; a 2-way average is exact either way, so the runs agree.
    for key in ("train_loss", "val_loss", "val_accuracy"):
        assert mpi[key] == pytest.approx(gloo[key], abs=1e-6), key
    assert proc.stdout.count("final: val accuracy") == 1  # rank 0 alone reports


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


def doctor(*args, env=None):
    return subprocess.run([sys.executable, "-m", "common.doctor", *args], cwd=ROOT,
                          env=env or job_env(), capture_output=True, text=True)


def test_doctor_reports_this_build():
    import torch

    proc = doctor("--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    pins = pinned_versions()
    hv = report["horovod"]
    assert hv["version"] == pins["HOROVOD_VERSION"]
    assert hv["frameworks"] == ["PyTorch", "TensorFlow"]
    assert hv["controllers"] == ["MPI", "Gloo"]
    assert "NCCL" not in hv["tensor_operations"] and {"MPI", "Gloo"} <= set(hv["tensor_operations"])
    # The libmpi mpi4py loads is the very file Horovod is linked against, and mpirun agrees.
    assert hv["mpi4py_same_library"] is True
    assert hv["mpi_library_files"] == report["mpi4py"]["library_files"]
    mpirun_version = subprocess.run(["mpirun", "--version"], capture_output=True, text=True).stdout
    release = mpirun_version.split()[3]  # "mpirun (Open MPI) 4.1.4"
    assert f"Open MPI v{release}" in report["mpi4py"]["library"]
    assert report["frameworks"]["torch"].split("+")[0] == pins["TORCH_VERSION"]
    assert report["frameworks"]["tensorflow"] == pins["TENSORFLOW_VERSION"]
    assert len(report["gpus"]) == torch.cuda.device_count()
    assert all(p["level"] == "warning" for p in report["problems"])
    text = doctor()
    assert text.returncode == 0
    assert "controllers  MPI, Gloo" in text.stdout and "(same as Horovod's)" in text.stdout
    assert text.stdout.rstrip().splitlines()[-1].startswith("doctor: ok")


def test_doctor_finds_an_mpirun_of_another_mpi(tmp_path):
    """A different MPI first on PATH is an error with a fix, and a non-zero exit."""
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "mpirun").write_text("#!/bin/sh\necho 'mpirun (Open MPI) 5.0.3'\n")
    (fake / "mpirun").chmod(0o755)
    env = job_env()
    env["PATH"] = f"{fake}{os.pathsep}{env['PATH']}"
    proc = doctor(env=env)
    assert proc.returncode == 1
    assert "error: mpirun is 'mpirun (Open MPI) 5.0.3' but mpi4py loads 'Open MPI v4.1.4" in proc.stdout
    fix = proc.stdout.split("error: mpirun is", 1)[1].splitlines()[1]
    assert fix.strip().startswith("fix: put one MPI first on PATH")
    assert proc.stdout.rstrip().splitlines()[-1].startswith("doctor: problems found")


def test_doctor_without_mpirun_warns_with_the_install_command(tmp_path):
    env = job_env()
    env["PATH"] = str(BIN)  # the venv only: no mpirun
    proc = doctor("--json", env=env)
    report = json.loads(proc.stdout)
    assert report["mpirun"]["path"] is None
    [warning] = [p for p in report["problems"] if "mpirun is not on PATH" in p["problem"]]
    assert "apt-get install openmpi-bin" in warning["fix"]
