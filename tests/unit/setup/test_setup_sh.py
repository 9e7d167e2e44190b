"""Tests of setup/setup.sh that start no build: one-line failures, bad knobs, one pin file."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from common.launch.doctor import pinned_versions
from tests.support import (
    ROOT,
    job_env,
)


def run(cmd, **kw):
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, **kw)


def test_failed_step_is_one_line_and_non_zero(tmp_path):
    env = job_env() | {"PYTHON": "/bin/false-python-does-not-exist", "VENV": str(tmp_path / "v")}
    proc = run(["bash", "setup/setup.sh"], env=env)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("setup: step 'python' failed:"), proc.stderr


def test_versions_live_only_in_versions_env():
    pins = [v for k, v in pinned_versions().items()
            if re.match(r"^(TORCH|TENSORFLOW|HOROVOD|MPI4PY)_VERSION$", k)]
    assert len(pins) == 4
    for path in [ROOT / "Makefile", ROOT / ".ci" / "run", *Path(ROOT / "setup").rglob("*.sh")]:
        text = path.read_text()
        for version in pins:
            assert f"=={version}" not in text and f"={version}\n" not in text, (path, version)


def test_bad_knob_is_one_line_before_any_step(tmp_path):
    for knob, value, allowed in (("SETUP_FLAVOR", "tpu", "cpu or gpu"),
                                 ("SETUP_FRAMEWORKS", "conda", "pinned or system"),
                                 ("SETUP_MPI", "yes", "0 or 1")):
        env = job_env() | {knob: value, "VENV": str(tmp_path / "v")}
        proc = run(["bash", "setup/setup.sh"], env=env)
        assert proc.returncode == 2 and proc.stdout == ""
        assert proc.stderr.strip().splitlines() == [
            f"setup: {knob} must be {allowed}, not '{value}' (see the knobs at the top of "
            "setup/setup.sh)"]
    assert not (tmp_path / "v").exists()
