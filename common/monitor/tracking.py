"""Tracking owns experiment trackers: rank 0's MLflow run (``--tracker mlflow``), sent off the train thread.

:class:`MlflowTracker` logs the run's resolved configuration as params, every epoch record as
metrics at its step, and at the end the final record (as ``final/...`` metrics) and the final
checkpoint (a tag). The tracked run's id is kept in the checkpoint folder (``tracking.json``),
so a resumed run goes on logging to the same tracked run, and so does rank 0 of an elastic
run's new world.

MLflow's calls run in one background thread, in order: a slow or unreachable tracking server
never holds up a step. A tracker that fails (server down, store not writable, disk full) warns
once and is dropped; training and checkpoints carry on. At the end the run waits up to
:data:`FLUSH_TIMEOUT_S` for what is still queued.
"""

from __future__ import annotations

import json
import logging
import math
import os
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from common.base.files import atomic_write

FLUSH_TIMEOUT_S = 60.0
ID_FILE = "tracking.json"
# MLflow keeps a param value to 6000 characters.
_PARAM_MAX = 6000


def tracker_for(output, checkpoint_dir: str | None, recipe: str,
                say: Callable[[str], None]) -> MlflowTracker | None:
    """The tracker ``--tracker`` asks for (None for ``none``); ``say`` prints rank 0's lines."""
    if output.tracker == "none":
        return None
    return MlflowTracker(output.tracking_uri, output.experiment or recipe, recipe,
                         os.path.join(checkpoint_dir, ID_FILE) if checkpoint_dir else None, say)


def flat(config: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """A nested configuration as MLflow params: ``a.b`` keys, string values."""
    out: dict[str, str] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = str(value)[:_PARAM_MAX]
    return out


def numbers(record: dict[str, Any]) -> dict[str, float]:
    """A record's finite numbers (flags and text left out)."""
    return {k: float(v) for k, v in record.items()
            if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)}


class MlflowTracker:
    """One MLflow run per training run, continued after a resume (see the module's text)."""

    name = "mlflow"

    def __init__(self, uri: str | None, experiment: str, run_name: str, id_file: str | None,
                 say: Callable[[str], None]) -> None:
        self.uri, self.experiment, self.run_name = uri, experiment, run_name
        self.id_file, self.say = id_file, say
        self.client = self.run_id = None
        self.failed = self.begun = self.ended = False
        self._jobs: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._work, name="tracker", daemon=True)
        self._thread.start()

    # --- what the reporter calls (rank 0, the training thread) ----------------------------------
    def begin(self, config: dict[str, Any], resumed: bool) -> None:
        """A run starts: a new tracked run, or (``resumed``) the one in the id file."""
        self.begun = True
        try:  # here, not in the thread: importing it there would slow this rank's first steps
            import mlflow.tracking  # noqa: F401
        except ImportError as e:
            self.failed = True
            self.say(f"warning: --tracker {self.name}: cannot import mlflow ({e}); `make setup` "
                     "installs it; training goes on without it")
            return
        for noisy in ("mlflow", "alembic"):  # their INFO lines at a store's creation
            logging.getLogger(noisy).setLevel(logging.WARNING)
        self._put(lambda: self._open(flat(config), resumed))

    def log(self, kind: str, record: dict[str, Any]) -> None:
        """An epoch record's numbers as metrics at its step; the final record as ``final/...``."""
        if not self.begun:  # a new world's rank 0 (elastic): the run in the id file goes on
            self.begin({}, resumed=True)
        if kind == "epoch":
            self._put(lambda: self._metrics(numbers(record), record.get("step", 0)))
        elif kind == "final":
            self._put(lambda: self._final(record))

    def end(self, status: str | None = None, timeout: float = FLUSH_TIMEOUT_S) -> None:
        """Wait for what is queued (at most ``timeout`` seconds); ``status`` (``FINISHED``,
        ``KILLED``, ``FAILED``) ends the tracked run too, once."""
        if status and self.begun and not self.ended:
            self.ended = True
            self._put(lambda: self.client.set_terminated(self.run_id, status))
        done = threading.Event()
        self._jobs.put((done.set, True))  # run even after a failure: the end waits for it
        if not done.wait(timeout) and not self.failed:
            self.say(f"warning: --tracker {self.name}: what was left to send did not go in "
                     f"{timeout:.0f}s (the tracking store is slow or down); every record is in "
                     "the metrics file")

    # --- the tracker's thread ---------------------------------------------------------------------
    def _put(self, job: Callable[[], None]) -> None:
        self._jobs.put((job, False))

    def _work(self) -> None:
        while True:
            job, always = self._jobs.get()
            if self.failed and not always:  # dropped after its first failure
                continue
            try:
                job()
            except Exception as e:  # noqa: BLE001 - any failure of the tracker, reported once
                self.failed = True
                first = (str(e).strip().splitlines() or [type(e).__name__])[0]
                self.say(f"warning: --tracker {self.name} failed ({type(e).__name__}: "
                         f"{first[:300]}); training goes on without it")

    def _open(self, params: dict[str, str], resumed: bool) -> None:
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(self.uri)
        uri = self.client.tracking_uri
        saved = self._saved() if resumed else {}
        if saved.get("uri") == uri and saved.get("run_id"):
            self.run_id = saved["run_id"]
            run = self.client.get_run(self.run_id)
            self.client.update_run(self.run_id, status="RUNNING")
            old = run.data.params
            # Params cannot change in MLflow: a value changed on resume goes in a tag.
            new = [Param(k, v) for k, v in params.items() if k not in old]
            for k, v in params.items():
                if k in old and old[k] != v:
                    self.client.set_tag(self.run_id, f"resumed_with.{k}", v)
            if new:
                self.client.log_batch(self.run_id, params=new)
            return
        found = self.client.get_experiment_by_name(self.experiment)
        experiment = found.experiment_id if found else self.client.create_experiment(self.experiment)
        run = self.client.create_run(experiment, run_name=self.run_name,
                                     tags={"horovod_recipes.recipe": self.run_name})
        self.run_id = run.info.run_id
        items = [Param(k, v) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow takes at most 100 params a batch
            self.client.log_batch(self.run_id, params=items[i:i + 100])
        if self.id_file:
            text = json.dumps({"tracker": self.name, "uri": uri, "experiment": self.experiment,
                               "run_id": self.run_id}) + "\n"
            atomic_write(self.id_file, lambda f: f.write(text), mode="w")

    def _saved(self) -> dict[str, Any]:
        try:
            with open(self.id_file or "") as f:
                return json.load(f)
        except (OSError, ValueError):
            return {}

    def _metrics(self, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, int(step))
                                                    for k, v in values.items()])

    def _final(self, record: dict[str, Any]) -> None:
        self._metrics({f"final/{k}": v for k, v in numbers(record).items()},
                      record.get("step", 0))
        if record.get("checkpoint"):
            self.client.set_tag(self.run_id, "checkpoint", str(record["checkpoint"]))
