"""Fold summary owns the end of a ``--folds K --mpi-groups K`` run: each fold's result, mean and spread.

When every group has trained its fold, rank 0 of the MPI world prints and writes one summary
record: each fold's final val accuracy and loss, their mean and standard deviation.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from common.base.files import atomic_write
from common.monitor.output import Reporter


def summary_path(metrics_file: str | None) -> str | None:
    """Where the summary goes: the metrics file named by the flag, above the fold folders."""
    if not metrics_file:
        return None
    fold_dir, name = os.path.split(metrics_file)
    return os.path.join(os.path.dirname(fold_dir), name)


def summarize(results: list[tuple[int, dict[str, Any]]]) -> dict[str, Any]:
    """The summary record of every fold's final record, ``[(fold, record), ...]``."""
    results = sorted(results, key=lambda r: r[0])
    acc = np.array([r["val_accuracy"] for _, r in results], dtype=np.float64)
    loss = np.array([r["val_loss"] for _, r in results], dtype=np.float64)
    # The standard deviation over folds as scikit-learn's cross_val_score(...).std() gives it.
    return {"type": "folds", "folds": len(results), "recipe": results[0][1]["recipe"],
            "val_accuracy": acc.tolist(), "val_loss": loss.tolist(),
            "val_accuracy_mean": float(acc.mean()), "val_accuracy_std": float(acc.std()),
            "val_loss_mean": float(loss.mean()), "val_loss_std": float(loss.std()),
            "world_size_per_fold": [r["world_size"] for _, r in results]}


def report_folds(cfg, record: dict[str, Any]) -> dict[str, Any] | None:
    """After a ``--folds K --mpi-groups K`` run (every process calls this): gather each fold's
    final record over the whole MPI world; world rank 0 prints the summary and writes it as one
    record to the metrics file the flag names. Returns the summary on world rank 0."""
    if not cfg.run.folds or cfg.run.mpi_groups < 2:
        return None
    from mpi4py import MPI

    gathered = MPI.COMM_WORLD.gather((cfg.run.fold, record), root=0)
    if MPI.COMM_WORLD.Get_rank() != 0:
        return None
    one_per_fold = dict(gathered)  # every rank of a group has the same (global) final record
    summary = summarize(list(one_per_fold.items()))
    out = Reporter(is_root=True)
    accs = " ".join(f"{a:.4f}" for a in summary["val_accuracy"])
    out.print(f"{summary['folds']}-fold cross-validation: val accuracy {accs}; mean "
        f"{summary['val_accuracy_mean']:.4f} +- {summary['val_accuracy_std']:.4f}")
    path = summary_path(cfg.output.metrics_file)
    if path:
        try:
            atomic_write(path, lambda f: f.write(json.dumps(summary, sort_keys=True) + "\n"),
                         mode="w")
        except OSError as e:
            out.print(f"warning: cannot write the fold summary to {path!r} ({e.strerror or e})")
    return summary
