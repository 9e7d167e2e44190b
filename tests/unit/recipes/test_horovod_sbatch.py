"""Tests of recipes/slurm/horovod.sbatch without a launch: its header, its dry-run commands, bad input
(tests/jobs/slurm runs it on a real SLURM)."""

from __future__ import annotations

import re

from tests.support import (
    MNIST,
    SBATCH,
    job_env,
    sbatch,
    slurm_env,
)


def test_sbatch_header_asks_one_task_per_gpu():
    header = dict(re.findall(r"^#SBATCH --([\w-]+)=(\S+)", SBATCH.read_text(), re.M))
    assert {"nodes", "ntasks-per-node", "gres", "time"} <= header.keys()
    assert header["gres"] == f"gpu:{header['ntasks-per-node']}"


def test_sbatch_dry_run_srun_and_mpirun_commands(tmp_path):
    env = slurm_env(tmp_path, ["node01", "node02"], 8, "4(x2)", DRY_RUN="1",
                    NCCL_SOCKET_IFNAME="ib0")
    env.pop("LD_LIBRARY_PATH", None)
    srun = sbatch("recipes/pytorch/mnist.py", "--epochs", "3", env=env).stdout
    assert "srun --mpi=pmix --cpu-bind=none --kill-on-bad-exit=1 python " \
           "recipes/pytorch/mnist.py --epochs 3" in srun
    mpi = sbatch("recipes/tensorflow/mnist.py", env=env | {"LAUNCHER": "mpirun"}).stdout
    assert "mpirun -np 8 -H node01:4,node02:4 -bind-to none -map-by slot" in mpi
    assert "-x NCCL_SOCKET_IFNAME" in mpi
    assert "-x LD_LIBRARY_PATH" not in mpi  # unset: mpirun would warn that it is missing
    assert mpi.rstrip().endswith("python recipes/tensorflow/mnist.py")
    with_path = sbatch("recipes/tensorflow/mnist.py", env=env | {"LAUNCHER": "mpirun",
                                                                 "LD_LIBRARY_PATH": "/opt/x"})
    assert "-x LD_LIBRARY_PATH" in with_path.stdout


def test_sbatch_without_pmix_in_srun_launches_with_mpirun(tmp_path):
    env = slurm_env(tmp_path, ["node01"], 2, "2", mpi_plugins=("none", "pmi2"), DRY_RUN="1")
    out = sbatch("recipes/pytorch/mnist.py", env=env).stdout
    assert "horovod.sbatch: this SLURM's srun has no --mpi=pmix (see srun --mpi=list); " \
           "launching with mpirun instead" in out
    assert "mpirun -np 2 -H node01:2" in out and "srun --mpi=" not in out.splitlines()[-1]
    pmi2 = sbatch("recipes/pytorch/mnist.py", env=env | {"SRUN_MPI": "pmi2"}).stdout
    assert "srun --mpi=pmi2 " in pmi2  # the plugin asked for is there


def test_sbatch_bad_input_is_one_line(tmp_path):
    proc = sbatch("recipes/pytorch/nope.py", check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: recipe recipes/pytorch/nope.py not found (submit from " \
                                  "the repository root)"
    proc = sbatch(MNIST, env=job_env() | {"LAUNCHER": "ssh"}, check=False)
    assert proc.returncode == 2 and proc.stderr.strip().startswith("error: LAUNCHER must be")


def test_sbatch_header_asks_for_a_warning_signal_and_requeue():
    text = SBATCH.read_text()
    assert re.search(r"^#SBATCH --signal=B:USR1@\d+$", text, re.M)
    assert re.search(r"^#SBATCH --requeue$", text, re.M)
    assert re.search(r"^#SBATCH --open-mode=append$", text, re.M)
