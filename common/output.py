"""Output owns what a run shows and records: rank-0 printing, the progress bar and the JSON Lines summary.

Only rank 0 prints or writes; other ranks get a Reporter whose methods do nothing, so recipes
call it unconditionally. The metrics file (``--metrics-file``) holds one JSON object per line:
a ``"type": "epoch"`` record after each epoch and a ``"type": "final"`` record at the end. A
resumed run appends to the records already there. Every write rewrites the file atomically.
"""

from __future__ import annotations

import json
import math
import os
import sys
from typing import Any

import numpy as np
from tqdm import tqdm

from common.checkpoint import atomic_write


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
    """Rank 0's voice: ``print``, a per-epoch progress bar, and the metrics file."""

    def __init__(self, is_root: bool, metrics_file: str | None = None,
                 progress: bool = True, log_dir: str | None = None) -> None:
        self.is_root = is_root
        self.metrics_file = metrics_file
        self.log_dir = log_dir if is_root else None
        self._writer = None
        # A bar only makes sense on a terminal; logs get one line per epoch instead.
        self.progress = progress and is_root and sys.stderr.isatty()
        self._records: list[dict] = []
        if is_root and metrics_file:
            self._records = read_metrics(metrics_file)

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
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(self.log_dir)
        for name, value in values.items():
            if value is not None and math.isfinite(value):
                self._writer.add_scalar(name, value, step)
        self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def start(self, *, recipe: str, cfg, recipe_args: dict[str, Any] | None, world_size: int,
              notices: list[str], n_train: int, n_val: int, describe: str, n_steps: int,
              target_lr: float, epoch: int, step: int, checkpoint: str | None) -> None:
        """The start of a run: notices, the resolved config (printed once and saved as
        config.yaml beside the checkpoints), the run's shape, and where it resumed from."""
        from common.config import one_line, resolved, save_resolved

        for notice in notices:
            self.print(f"note: {notice}")
        config = resolved(recipe, cfg, recipe_args or {}, world_size)
        self.print(f"config: {one_line(config)}")
        if self.is_root and cfg.checkpoint_dir:
            save_resolved(os.path.join(cfg.checkpoint_dir, "config.yaml"), config)
        self.print(f"{recipe}: {n_train} train / {n_val} val samples{describe}, "
                   f"{world_size} worker(s) x batch {cfg.batch_size} x "
                   f"{cfg.batches_per_allreduce} pass(es), {n_steps} steps/epoch, "
                   f"LR {cfg.base_lr:g} -> {target_lr:g}")
        if step:
            self.print(f"resumed from {checkpoint} (epoch {epoch}, step {step})")

    def epoch(self, *, epoch: int, epochs: int, step: int, lr: float, train, val,
              samples_per_sec: float, world_size: int, elapsed: float,
              checkpoint: str | None, **extra: float) -> None:
        """The end of an epoch: one printed line, one JSON record, TensorBoard scalars.

        ``train`` and ``val`` are global MetricSums; ``extra`` adds fields such as val_top5.
        """
        self.print(f"epoch {epoch}/{epochs}: train loss {train.loss:.4f} acc {train.accuracy:.4f}"
                   f" | val loss {val.loss:.4f} acc {val.accuracy:.4f}"
                   + "".join(f" {k} {v:.4f}" for k, v in extra.items())
                   + f" | {samples_per_sec:,.0f} samples/s")
        self.record("epoch", epoch=epoch, step=step, lr=lr, world_size=world_size,
                    train_loss=train.loss,
                    train_accuracy=train.accuracy, val_loss=val.loss, val_accuracy=val.accuracy,
                    **extra, samples_per_sec=samples_per_sec,
                    samples_per_sec_per_worker=samples_per_sec / world_size,
                    epoch_time_s=elapsed, checkpoint=checkpoint)
        self.scalars(step, **{"train/loss": train.loss, "train/accuracy": train.accuracy,
                              "val/loss": val.loss, "val/accuracy": val.accuracy, "lr": lr,
                              "samples_per_sec": samples_per_sec})

    def final(self, *, recipe: str, epochs: int, step: int, train, val, samples_per_sec: float,
              world_size: int, wall: float, checkpoint: str | None,
              **extra: float) -> dict[str, Any]:
        """The end of a run: the final JSON record and line; returns the record."""
        rec = dict(recipe=recipe, world_size=world_size, epochs=epochs, step=step,
                   train_loss=train.loss, train_accuracy=train.accuracy, val_loss=val.loss,
                   val_accuracy=val.accuracy, **extra, samples_per_sec=samples_per_sec,
                   samples_per_sec_per_worker=samples_per_sec / world_size, wall_time_s=wall,
                   checkpoint=checkpoint)
        self.record("final", **rec)
        self.close()
        self.print(f"final: val accuracy {val.accuracy:.4f} on {world_size} worker(s) in "
                   f"{wall:.1f}s; checkpoint: {checkpoint}; metrics: {self.metrics_file}")
        return rec

    def benchmark(self, rates: list[float], allreduce_sum, world_size: int,
                  **fields: Any) -> dict[str, Any]:
        """Summarise a throughput benchmark (a collective): this rank's images/s per iteration
        are summed over ranks per iteration; prints per-worker and total mean +- 95% interval
        and writes a ``"type": "benchmark"`` record with ``fields``."""
        from common.metrics import mean_ci95

        totals = allreduce_sum(np.asarray(rates, dtype=np.float64))
        w_mean, w_ci = mean_ci95(totals / world_size)
        t_mean, t_ci = mean_ci95(totals)
        self.print(f"img/s per worker: {w_mean:.1f} +- {w_ci:.1f}")
        self.print(f"total img/s on {world_size} worker(s): {t_mean:.1f} +- {t_ci:.1f}")
        rec = dict(fields, world_size=world_size, iterations=len(rates),
                   img_per_sec_per_worker=w_mean, img_per_sec_per_worker_ci95=w_ci,
                   img_per_sec_total=t_mean, img_per_sec_total_ci95=t_ci)
        self.record("benchmark", **rec)
        return rec

    def record(self, kind: str, **fields: Any) -> None:
        """Append one record of type ``kind`` to the metrics file."""
        if not (self.is_root and self.metrics_file):
            return
        self._records.append(_clean({"type": kind, **fields}))
        text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in self._records)
        atomic_write(self.metrics_file, lambda f: f.write(text), mode="w")


def read_metrics(path: str) -> list[dict]:
    """The records of a metrics file (empty if it does not exist)."""
    try:
        with open(path) as f:
            return [json.loads(line) for line in f if line.strip()]
    except FileNotFoundError:
        return []
