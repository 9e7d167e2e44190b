"""Folds owns K-fold cross-validation's split: which samples each fold holds, the same on every rank and run.

``--folds K --fold I`` trains on every fold but I and validates on fold I. The folds are cut
from one fixed permutation of the training set (:data:`SPLIT_SEED`, not ``--seed``), so they are
disjoint, cover every sample, and are the same on every rank, in every group and in every run.
``--folds K --mpi-groups K`` (one ``mpirun``) trains fold k in group k; the summary of such a
run is ``common.monitor.fold_summary``'s.
"""

from __future__ import annotations

import numpy as np

from common.base.errors import UserError

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
