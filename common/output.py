"""Output owns what a run shows and records: rank-0 printing, the progress bar and the JSON Lines summary.

Only rank 0 prints or writes; other ranks get a Reporter whose methods do nothing, so recipes
call it unconditionally. The metrics file (``--metrics-file``) holds one JSON object per line:
a ``"type": "epoch"`` record after each epoch and a ``"type": "final"`` record at the end. A
resumed run appends to the records already there. Every write rewrites the file atomically.
"""

from __future__ import annotations

import json
import math
import sys
from typing import Any

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
