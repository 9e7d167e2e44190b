"""Folds owns K-fold cross-validation: which samples each fold holds, and the summary of a run of every fold.

``--folds K --fold I`` trains on every fold but I and validates on fold I. The folds are cut
from one fixed permutation of the training set (:data:`SPLIT_SEED`, not ``--seed``), so they are
disjoint, cover every sample, and are the same on every rank, in every group and in every run.
``--folds K --mpi-groups K`` (one ``mpirun``) trains fold k in group k; when all are done,
rank 0 of the world prints and writes one summary record: each fold's final val accuracy and
loss, their mean and standard deviation.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from common.failure import UserError

SPLIT_SEED = 0


def fold_indices(n: int, folds: int, fold: int) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, val indices) of fold ``fold`` of ``folds`` over ``n`` samples.

    Fold sizes differ by at most one; the val folds of 0..K-1 partition ``range(n)``."""
    if folds < 2 or not 0 <= fold < folds:
        raise ValueError(f"fold {fold} of {folds}")
    if n < folds:
        raise UserError(f"--folds {folds} needs at least {folds} training samples, the data "
                        f"has {n}")
    parts = np.array_split(np.random.default_rng(SPLIT_SEED).permutation(n), folds)
    val = np.sort(parts[fold])
    train = np.sort(np.concatenate([p for k, p in enumerate(parts) if k != fold]))
    return train, val


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

    from common.checkpoint import atomic_write
    from common.output import Reporter

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
