"""Shared test fixtures: launching real Horovod jobs with horovodrun and reading their results."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
MNIST = ROOT / "recipes" / "pytorch" / "mnist.py"
HELPERS = Path(__file__).resolve().parent / "helpers"
# Guards against a hung job only; no test asserts a duration.
HANG_GUARD_S = 900


# What the fault-injection tests saw: one entry per fault injected ({"hung": bool, "lost": n}).
FAULTS: list[dict] = []


@pytest.fixture
def fault_record() -> list[dict]:
    return FAULTS


def pytest_terminal_summary(terminalreporter):
    if FAULTS:
        terminalreporter.write_line(
            f"fault injection: {len(FAULTS)} faults injected, "
            f"{sum(f['hung'] for f in FAULTS)} hangs, "
            f"{sum(f['lost'] for f in FAULTS)} checkpoints lost")


def job_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = f"{ROOT}{os.pathsep}{env.get('PYTHONPATH', '')}"
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def horovodrun(np: int, args: list[str], cwd: Path, hosts: str | None = None,
               check: bool = True) -> subprocess.CompletedProcess:
    """Launch ``python args...`` on ``np`` Gloo workers on this machine; return the finished job."""
    cmd = [str(BIN / "horovodrun"), "-np", str(np), "-H", hosts or f"localhost:{np}", "--gloo",
           "--disable-cache", str(BIN / "python"), *map(str, args)]
    return _run_job(cmd, cwd, check)


def mpirun(np: int, args: list[str], cwd: Path, check: bool = True,
           extra: list[str] = ()) -> subprocess.CompletedProcess:
    """Launch ``python args...`` on ``np`` processes with Open MPI's mpirun, as the README says."""
    root = ["--allow-run-as-root"] if os.geteuid() == 0 else []
    exports = ["PATH", "LD_LIBRARY_PATH", "PYTHONPATH", "PYTHONUNBUFFERED", "OMP_NUM_THREADS"]
    env = job_env()
    cmd = ["mpirun", *root, "-np", str(np), "-bind-to", "none", "-map-by", "slot",
           *[a for name in exports if name in env for a in ("-x", name)],
           *extra, str(BIN / "python"), *map(str, args)]
    return _run_job(cmd, cwd, check)


def _run_job(cmd: list[str], cwd: Path, check: bool) -> subprocess.CompletedProcess:
    try:
        proc = subprocess.run(cmd, cwd=cwd, env=job_env(), capture_output=True, text=True,
                              timeout=HANG_GUARD_S)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"job hung (no exit in {HANG_GUARD_S}s): {' '.join(cmd)}\n{e.stdout}\n{e.stderr}")
    if check and proc.returncode != 0:
        pytest.fail(f"job failed ({proc.returncode}): {' '.join(cmd)}\n"
                    f"--- stdout\n{proc.stdout[-6000:]}\n--- stderr\n{proc.stderr[-6000:]}")
    return proc


def read_records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def final_record(path: Path) -> dict:
    finals = [r for r in read_records(path) if r["type"] == "final"]
    assert finals, f"no final record in {path}"
    return finals[-1]


def load_checkpoint(path: str | Path) -> dict:
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)


def max_abs_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


def worker_pids(script: str | Path, *env: str) -> list[int]:
    """Python processes running ``script`` whose environment holds any of ``env``
    (``"HOROVOD_RANK=1"``, ``"HOROVOD_HOSTNAME=127.0.0.1"``): the workers a launcher started."""
    wanted = [e.encode() for e in env]
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if (any(str(script).encode() in c for c in cmd) and cmd[0].endswith(b"python")
                and any(w in environ for w in wanted)):
            pids.append(int(pid))
    return pids


def run_elastic_and_kill_one(script: Path, tmp_path: Path, epochs: int = 30):
    """An elastic job on 3 workers (hosts localhost:2 and 127.0.0.1:1, no ssh): once it has
    finished an epoch, SIGKILL the 127.0.0.1 worker; the job must end well on 2 workers.

    Returns (metrics records, job output)."""
    discover = tmp_path / "discover_hosts.sh"
    discover.write_text("#!/bin/sh\necho localhost:2\necho 127.0.0.1:1\n")
    discover.chmod(0o755)
    metrics = tmp_path / "metrics.jsonl"
    cmd = [str(BIN / "horovodrun"), "-np", "3", "--min-np", "2", "--max-np", "3",
           "--host-discovery-script", str(discover), str(BIN / "python"), str(script),
           "--epochs", str(epochs), "--batch-size", "8", "--commit-steps", "5",
           "--checkpoint-dir", str(tmp_path / "ckpt"), "--metrics-file", str(metrics)]
    job = subprocess.Popen(cmd, cwd=tmp_path, env=job_env(), stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + HANG_GUARD_S
        while not (metrics.exists() and read_records(metrics)):  # epoch 1 done on 3 workers
            assert job.poll() is None, job.stdout.read()
            assert time.monotonic() < deadline, "elastic job never finished an epoch"
            time.sleep(0.2)
        victims = worker_pids(script, "HOROVOD_HOSTNAME=127.0.0.1")
        assert len(victims) == 1, victims
        os.kill(victims[0], signal.SIGKILL)
        output, _ = job.communicate(timeout=HANG_GUARD_S)
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
    assert job.returncode == 0, output[-5000:]
    records = read_records(metrics)
    epochs_seen = [r for r in records if r["type"] == "epoch"]
    sizes = [r["world_size"] for r in epochs_seen]
    assert sizes[0] == 3 and sizes[-1] == 2, sizes
    assert epochs_seen[-1]["epoch"] == epochs
    # The elastic recipes report through the same loop as every other: full epoch records.
    assert all(r["lr"] > 0 and r["samples_per_sec"] > 0 for r in epochs_seen)
    return records, output
