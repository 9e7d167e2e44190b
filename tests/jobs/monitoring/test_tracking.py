"""--tracker mlflow: one tracked run per training run, read back through MLflow's own client from a
local store; a resumed run goes on in it; a tracker that fails changes nothing of the training."""

from __future__ import annotations

import json

import pytest

from tests.support import (
    MNIST,
    epoch_records,
    final_checkpoint,
    final_record,
    horovodrun,
    max_abs_diff,
    run_recipe,
)

FLAGS = ["--tracker", "mlflow", "--experiment", "tracked"]


@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    """A 2-worker MNIST run of 2 epochs tracked in a local store, then resumed to 3 epochs: the
    store, the run folder and the checkpoints and records the first run left."""
    root = tmp_path_factory.mktemp("tracking")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    out, first = run_recipe(horovodrun, 2, MNIST, root / "run", *FLAGS, "--tracking-uri", uri,
                            "--epochs", "2")
    after_first = {"final": final_record(out / "metrics.jsonl"), "checkpoint": final_checkpoint(out),
                   "output": first.stdout + first.stderr}
    _, resumed = run_recipe(horovodrun, 2, MNIST, out, *FLAGS, "--tracking-uri", uri,
                            "--epochs", "3")
    return root, uri, out, after_first, resumed


def client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(uri)


def test_a_run_is_one_tracked_run_with_every_epoch_and_a_resume_goes_on_in_it(tracked):
    root, uri, out, first, resumed = tracked
    mlflow = client(uri)
    experiment = mlflow.get_experiment_by_name("tracked")
    [run] = mlflow.search_runs([experiment.experiment_id])  # exactly one, after the resume too
    run_id = json.loads((out / "ckpt" / "tracking.json").read_text())["run_id"]
    assert run.info.run_id == run_id and run.info.status == "FINISHED"
    records = epoch_records(out / "metrics.jsonl")
    assert [r["epoch"] for r in records] == [1, 2, 3]
    for key in ("train_loss", "val_accuracy", "lr", "samples_per_sec"):
        history = mlflow.get_metric_history(run_id, key)
        assert [(m.step, m.value) for m in history] == [(r["step"], r[key]) for r in records], key
    params = run.data.params
    assert (params["batch_size"], params["world_size"], params["epochs"]) == ("32", "2", "2")
    assert run.data.tags["resumed_with.epochs"] == "3"  # params cannot change; the tag says it
    final = final_record(out / "metrics.jsonl")
    assert run.data.tags["checkpoint"] == final["checkpoint"]
    finals = mlflow.get_metric_history(run_id, "final/val_accuracy")
    assert [(m.step, m.value) for m in finals] == [(first["final"]["step"], first["final"]["val_accuracy"]),
                                                   (final["step"], final["val_accuracy"])]
    assert "warning" not in first["output"] + resumed.stdout + resumed.stderr


def test_a_failing_tracker_warns_once_and_changes_nothing(tracked, tmp_path):
    """The store cannot be made (its folder is a file): one warning, exit 0, and the weights
    and metrics of the tracked run's first 2 epochs."""
    _, _, _, first, _ = tracked
    (tmp_path / "afile").write_text("")
    out, proc = run_recipe(horovodrun, 2, MNIST, tmp_path / "run", *FLAGS, "--tracking-uri",
                           f"sqlite:///{tmp_path / 'afile' / 'mlflow.db'}", "--epochs", "2")
    text = proc.stdout + proc.stderr
    assert text.count("warning: --tracker mlflow failed") == 1, text[-3000:]
    assert "training goes on without it" in text
    final = final_record(out / "metrics.jsonl")
    assert final["val_accuracy"] == first["final"]["val_accuracy"]
    assert final["train_loss"] == first["final"]["train_loss"]
    assert max_abs_diff(final_checkpoint(out)["model"], first["checkpoint"]["model"]) == 0
    assert not (out / "ckpt" / "tracking.json").exists()
