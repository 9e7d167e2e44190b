"""Shared test fixtures: launching real Horovod jobs with horovodrun and reading their results."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
MNIST = ROOT / "recipes" / "pytorch" / "mnist.py"
HELPERS = Path(__file__).resolve().parent / "helpers"
# Guards against a hung job only; no test asserts a duration.
HANG_GUARD_S = 900


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
