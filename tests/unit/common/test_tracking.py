"""The tracker's conversions: a resolved config as MLflow params, a record's numbers as metrics,
and no tracker unless one is asked for (MLflow itself is exercised by tests/jobs/monitoring)."""

from __future__ import annotations

import math
from types import SimpleNamespace

from common.monitor.tracking import flat, numbers, tracker_for


def test_a_nested_config_becomes_dotted_string_params():
    params = flat({"recipe": "r", "batch_size": 32, "stop_signals": ["TERM", "INT"],
                   "runtime_settings": {"OMPI_MCA_btl": "^openib"}, "long": "x" * 7000})
    assert params["batch_size"] == "32" and params["stop_signals"] == "['TERM', 'INT']"
    assert params["runtime_settings.OMPI_MCA_btl"] == "^openib"
    assert len(params["long"]) == 6000  # MLflow's limit for a param value


def test_only_finite_numbers_become_metrics():
    record = {"step": 44, "train_loss": 0.5, "includes_warmup": True, "checkpoint": "a.pt",
              "val_accuracy": float("nan"), "lr": 0.1, "balance": None}
    assert numbers(record) == {"step": 44.0, "train_loss": 0.5, "lr": 0.1}
    assert all(math.isfinite(v) for v in numbers(record).values())


def test_no_tracker_unless_asked():
    output = SimpleNamespace(tracker="none", tracking_uri=None, experiment=None)
    assert tracker_for(output, "ckpt", "r", print) is None
