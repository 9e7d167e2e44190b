"""Output owns what a run shows and records: rank-0 printing, progress, JSON Lines, TensorBoard, a tracker.

Only rank 0 prints or writes; other ranks get a Reporter whose methods do nothing, so recipes
call it unconditionally. The metrics file (``--metrics-file``) holds one JSON object per line:
a ``"type": "epoch"`` record after each epoch and a ``"type": "final"`` record at the end. A
resumed run appends to the records already there, each epoch once (:meth:`Reporter.resumed`).
Every write rewrites the file atomically; a write that fails warns once and stops the file.
"""

from __future__ import annotations

import json
import math
import os
import sys
import types
from collections.abc import Callable
from typing import Any

from tqdm import tqdm

from common.base.files import atomic_write
from common.config.core import OutputConfig, one_line, resolved, save_resolved
from common.monitor.metrics import MetricSums
from common.monitor.tracking import FLUSH_TIMEOUT_S, MlflowTracker
from common.world.runtime import SETTINGS, settings_line


def tensorboard_without_tensorflow() -> None:
    """Make TensorBoard's Python API use the stub it ships instead of importing TensorFlow.

    TensorBoard asks for a TF-like API when its writers and readers load, and answers with
    TensorFlow itself wherever it is installed: 9 s and about 1 GB more in a PyTorch process
    (measured 2026-12-06). ``tensorboard.compat.notf`` is its own switch to the stub (local files
    and S3, all a scalar writer or reader needs). Call it before importing TensorBoard; a
    process that has already imported TensorFlow keeps it."""
    if "tensorflow" not in sys.modules:
        sys.modules.setdefault("tensorboard.compat.notf",
                               types.ModuleType("tensorboard.compat.notf"))


_MAIN_FIELDS = ("train_loss", "train_accuracy", "val_loss", "val_accuracy")


def _metric_fields(train: MetricSums, val: MetricSums) -> dict[str, float]:
    """``train_<metric>`` and ``val_<metric>`` for every metric the sums support."""
    return {f"{split}_{name}": value for split, sums in (("train", train), ("val", val))
            for name, value in sums.metrics().items()}


def _clean(value: Any) -> Any:
    """JSON has no NaN/inf: write them as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


class Reporter:
    """Rank 0's voice: ``print``, a per-epoch progress bar, the metrics file and TensorBoard.

    ``scalar_writer(log_dir)`` makes the TensorBoard writer (the backend's, so a TensorFlow run
    needs no torch); it is called on rank 0 at the first scalar. ``tracker``: rank 0's
    experiment tracker (``common.monitor.tracking``), handed the config and every record.
    """

    def __init__(self, is_root: bool, output: OutputConfig | None = None,
                 scalar_writer: Callable[[str], Any] | None = None,
                 tracker: MlflowTracker | None = None) -> None:
        output = output or OutputConfig()
        self.is_root = is_root
        self.tracker = tracker if is_root else None
        self.metrics_file = output.metrics_file
        self.log_dir = output.log_dir if is_root and scalar_writer else None
        self._make_writer = scalar_writer
        self._writer = None
        # A bar only makes sense on a terminal; elsewhere (horovodrun and mpirun pipe rank 0's
        # output) a progress line every ``progress_every`` seconds.
        self.progress = output.progress and is_root and sys.stderr.isatty()
        self.progress_lines = output.progress and is_root and not self.progress
        self.progress_every = output.progress_every
        self._records: list[dict] = []
        if is_root and self.metrics_file:
            self._records = read_metrics(self.metrics_file)

    def print(self, *args: Any) -> None:
        if self.is_root:
            # One write per line: mpirun --tag-output tags every write, so text and newline
            # written apart would leave a stray tag at the end of the line.
            sys.stdout.write(" ".join(map(str, args)) + "\n")
            sys.stdout.flush()

    def bar(self, total: int, desc: str) -> tqdm:
        """A tqdm bar over ``total`` steps (disabled off rank 0 or off a terminal)."""
        return tqdm(total=total, desc=desc, unit="step", disable=not self.progress,
                    leave=False, dynamic_ncols=True, file=sys.stderr)

    def scalars(self, step: int, **values: float) -> None:
        """TensorBoard scalars at ``step`` (rank 0, with ``--log-dir``)."""
        if not self.log_dir:
            return
        if self._writer is None:
            self._writer = self._make_writer(self.log_dir)
        for name, value in values.items():
            if value is not None and math.isfinite(value):
                self._writer.add_scalar(name, value, step)
        self._writer.flush()

    def close(self, status: str | None = None, timeout: float = FLUSH_TIMEOUT_S) -> None:
        """Close TensorBoard's writer and wait for the tracker's queue; ``status``
        (``FINISHED``, ``KILLED``, ``FAILED``) ends the tracked run as well."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self.tracker is not None:
            self.tracker.end(status, timeout)

    def start(self, *, recipe: str, cfg, recipe_args: dict[str, Any] | None, world_size: int,
              notices: list[str], n_train: int, n_val: int, describe: str, n_steps: int,
              target_lr: float, epoch: int, step: int, checkpoint: str | None,
              replicas: int | None = None, steps_into_epoch: int = 0,
              saved_step: int | None = None) -> str:
        """The start of a run: fresh or resumed from which checkpoint, notices, the settings
        that differ from the recipe's defaults (the whole resolved config is saved as
        config.yaml beside the checkpoints), the runtime settings of a multi-worker run, and
        the run's shape.

        ``replicas``: the data-parallel copies, when not every worker is one (a pipeline);
        ``saved_step``: the checkpoint's own step, when the run goes on at another one (another
        world size, so other steps per epoch). Returns rank 0's error writing config.yaml ('' if
        none), for the caller to agree on."""
        folder = cfg.checkpoint.checkpoint_dir
        if step:
            into = f" and {steps_into_epoch} step(s)" if steps_into_epoch else ""
            where = (f"step {step}" if saved_step in (None, step) else
                     f"saved at step {saved_step}, step {step} at {n_steps} steps/epoch now")
            self.print(f"resumed from {checkpoint} ({epoch} epoch(s){into} done, {where})")
        else:
            self.print("fresh run: " + (f"no checkpoint in {folder}" if folder else
                                        "no --checkpoint-dir, nothing will be saved"))
        for notice in notices:
            self.print(f"note: {notice}")
        config = resolved(recipe, cfg, recipe_args or {}, world_size, SETTINGS)
        yaml_path = os.path.join(folder, "config.yaml") if folder else None
        changed = {k: v for k, v in config.items() if k in cfg.changed}
        where = f"; all of them in {yaml_path}" if yaml_path else ""
        self.print(f"config: {one_line(changed)} (the rest: {recipe}'s defaults{where})" if changed
                   else f"config: {recipe}'s defaults{where}")
        if SETTINGS and world_size > 1:
            self.print(settings_line())
        if self.tracker is not None:
            self.tracker.begin(config, resumed=bool(step))
        if self.is_root and yaml_path:
            try:
                save_resolved(yaml_path, config)
            except OSError as e:
                return f"cannot write {yaml_path!r}: {e.strerror or e}"
        self.print(f"{recipe}: {n_train} train / {n_val} val samples{describe}, "
                   f"{world_size} worker(s)"
                   + (f" as {replicas} replica(s)" if replicas not in (None, world_size) else "")
                   + f" x batch {cfg.run.batch_size} x "
                   f"{cfg.gradients.batches_per_allreduce} pass(es), {n_steps} steps/epoch, "
                   f"LR {cfg.schedule.base_lr:g} -> {target_lr:g}")
        return ""

    def progress_line(self, *, epoch: int, epochs: int, step_in_epoch: int, n_steps: int,
                      loss: float, samples_per_sec: float, epoch_eta: float,
                      run_eta: float) -> None:
        """Rank 0's progress where no bar can show (its output is a pipe or a file): one
        line every ``--progress-every`` seconds, with the epoch's and the run's time left."""
        self.print(f"  epoch {epoch}/{epochs}: step {step_in_epoch}/{n_steps} | loss {loss:.4f} | "
                   f"{samples_per_sec:,.0f} samples/s | ETA epoch {_duration(epoch_eta)}, run "
                   f"{_duration(run_eta)}")

    def epoch(self, *, epoch: int, epochs: int, step: int, lr: float, train: MetricSums,
              val: MetricSums, samples_per_sec: float, world_size: int, elapsed: float,
              checkpoint: str | None, balance: dict[str, Any] | None = None,
              warmup: bool = False, gradients: dict[str, float] | None = None) -> None:
        """The end of an epoch: one printed line, one JSON record, TensorBoard scalars.

        ``train`` and ``val`` are global MetricSums; every metric they support is recorded.
        ``balance``: the epoch's load balance (``common.monitor.balance.summarize``); its straggler
        verdict, when there is one, is printed on the next line. ``warmup``: the epoch is
        the run's first, whose samples/s include start-up (tracing, first allocations).
        ``gradients``: the averaged gradient's norm before clipping (``--clip-grad-norm``).
        """
        gradients = gradients or {}
        balance = balance or {}
        fields = _metric_fields(train, val)
        extra = {k: v for k, v in fields.items() if k not in _MAIN_FIELDS}
        self.print(f"epoch {epoch}/{epochs}: train loss {train.loss:.4f} acc {train.accuracy:.4f}"
                   f" | val loss {val.loss:.4f} acc {val.accuracy:.4f}"
                   + "".join(f" {k} {v:.4f}" for k, v in extra.items())
                   + (f" | grad norm {gradients['grad_norm_mean']:.3g} (max "
                      f"{gradients['grad_norm_max']:.3g}, {gradients['clipped_share']:.0%} "
                      "clipped)" if gradients else "")
                   + f" | {samples_per_sec:,.0f} samples/s"
                   + (" (first epoch: includes start-up and tracing)" if warmup else ""))
        if balance.get("straggler"):
            self.print(f"  load balance: {balance['straggler']}")
        self.record("epoch", epoch=epoch, step=step, lr=lr, world_size=world_size, **fields,
                    samples_per_sec=samples_per_sec,
                    samples_per_sec_per_worker=samples_per_sec / world_size,
                    epoch_time_s=elapsed, checkpoint=checkpoint, includes_warmup=warmup,
                    **gradients, **balance)
        self.scalars(step, **{k.replace("_", "/", 1): v for k, v in fields.items()}, lr=lr,
                     samples_per_sec=samples_per_sec,
                     **{f"balance/{k}": balance.get(k) for k in ("balance_spread", "comm_share")})

    def final(self, *, recipe: str, epochs: int, step: int, train: MetricSums, val: MetricSums,
              samples_per_sec: float, world_size: int, wall: float,
              checkpoint: str | None, stats: dict[str, Any] | None = None,
              since_start: float | None = None) -> dict[str, Any]:
        """The end of a run: the final JSON record and line; returns the record. ``wall``: the
        training's time (from the restore on); ``since_start``: from the process's start
        (imports, Horovod's start, the data). ``stats``: the strategy's own numbers
        (``Backend.run_stats``), added to the record."""
        rec = dict(recipe=recipe, world_size=world_size, epochs=epochs, step=step,
                   **_metric_fields(train, val), samples_per_sec=samples_per_sec,
                   samples_per_sec_per_worker=samples_per_sec / world_size, wall_time_s=wall,
                   time_since_start_s=since_start, checkpoint=checkpoint, **(stats or {}))
        self.record("final", **rec)
        self.close("FINISHED")
        total = f" ({since_start:.1f}s since the start)" if since_start is not None else ""
        self.print(f"final: val accuracy {val.accuracy:.4f} on {world_size} worker(s); trained "
                   f"in {wall:.1f}s{total}; checkpoint: {checkpoint}; metrics: {self.metrics_file}")
        return rec

    def resumed(self, epoch: int) -> None:
        """A run resumed after ``epoch`` full epochs: forget the epoch records after it (an
        interrupted epoch's, or epochs whose checkpoint was never written), so that the file
        holds each epoch once."""
        self._records = [r for r in self._records
                         if r.get("type") != "epoch" or r.get("epoch", 0) <= epoch]

    def record(self, kind: str, **fields: Any) -> None:
        """Append one record of type ``kind`` to the metrics file.

        A write that fails (a full disk, say) does not stop training: rank 0 says so once and
        stops writing the file; checkpoints carry on."""
        if self.tracker is not None:
            self.tracker.log(kind, _clean(fields))
        if not (self.is_root and self.metrics_file):
            return
        self._records.append(_clean({"type": kind, **fields}))
        text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in self._records)
        try:
            atomic_write(self.metrics_file, lambda f: f.write(text), mode="w")
        except OSError as e:
            self.print(f"warning: cannot write --metrics-file {self.metrics_file!r} "
                       f"({e.strerror or e}); training goes on without it")
            self.metrics_file = None


def _duration(seconds: float) -> str:
    """``1:02:03``, ``2:03`` or ``?`` (not known yet)."""
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    minutes, sec = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{sec:02d}" if hours else f"{minutes}:{sec:02d}"


def read_metrics(path: str) -> list[dict]:
    """The records of a metrics file (empty if it does not exist)."""
    try:
        with open(path) as f:
            return [json.loads(line) for line in f if line.strip()]
    except FileNotFoundError:
        return []
