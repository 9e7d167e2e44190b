"""Sharding owns which samples each rank sees in an epoch, and in which order.

Every epoch all ranks draw the same permutation from ``(seed, epoch)`` and rank r takes every
``size``-th index starting at r, so shards are disjoint and cover the data. For training the
permutation's tail is dropped so every shard has the same length (at most ``size - 1`` samples
per epoch are left out, different ones each epoch); equal shards give every rank the same number
of steps, so no rank waits in an allreduce that another never reaches. Validation keeps every
sample; its shards may differ by one and the sums are reduced once.
"""

from __future__ import annotations

import numpy as np


def shard_indices(n: int, rank: int, size: int, seed: int, epoch: int,
                  shuffle: bool = True, drop_tail: bool = True, samples_done: int = 0) -> np.ndarray:
    """The dataset indices rank ``rank`` of ``size`` processes in ``epoch``, in order.

    ``samples_done`` skips the first samples of the epoch's global order: those already trained by
    a run that stopped (or a world that changed) after ``samples_done`` samples, so the rest of the
    epoch is re-sharded over the current world.
    """
    if not 0 <= rank < size:
        raise ValueError(f"rank {rank} outside world of size {size}")
    if shuffle:
        order = np.random.default_rng([seed, epoch]).permutation(n)
    else:
        order = np.arange(n)
    order = order[samples_done:]
    if drop_tail:
        order = order[: len(order) - len(order) % size]
    return order[rank::size]
