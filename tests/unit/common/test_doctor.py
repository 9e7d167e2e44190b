"""common/launch/doctor.py in this process: importing it changes nothing around it (its report is tested
as a user runs it, in tests/jobs/launch/test_doctor.py)."""

from __future__ import annotations

import importlib
import os

import common.launch.doctor


def test_importing_the_doctor_leaves_the_environment_alone(monkeypatch):
    """It once set TF_CPP_MIN_LOG_LEVEL at import, and every job a test process started after
    importing it ran with TensorFlow's start-up lines turned off."""
    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
    before = dict(os.environ)
    importlib.reload(common.launch.doctor)
    assert dict(os.environ) == before
