"""Torch data owns PyTorch input: a rank's shard as a DataLoader sampler, augmentation seeded per sample.

Which samples a rank takes, in which order, is decided once for every framework in
``common.data.sharding.shard_indices``; this module only feeds those indices to PyTorch's DataLoader.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch


class ShardSampler(torch.utils.data.Sampler):
    """Yields the indices it was last given (a rank's shard of an epoch).

    With ``with_epoch`` it yields ``(epoch, index)`` keys for datasets whose augmentation is
    seeded per epoch and sample (:class:`SeededTransform`).
    """

    def __init__(self, with_epoch: bool = False) -> None:
        self.with_epoch = with_epoch
        self.epoch = 0
        self.indices = np.zeros(0, dtype=np.int64)

    def set_epoch(self, epoch: int, indices: np.ndarray) -> None:
        self.epoch, self.indices = epoch, indices

    def __iter__(self):
        for i in self.indices.tolist():
            yield (self.epoch, i) if self.with_epoch else i

    def __len__(self) -> int:
        return len(self.indices)


class SeededTransform(torch.utils.data.Dataset):
    """A dataset whose random augmentation depends only on (seed, epoch, sample index).

    Wrapping ``dataset[i] -> (x, y)`` and ``transform(x)``: the transform runs under torch's RNG
    seeded from the key, and the caller's RNG state is left as it was. Augmentation is then the
    same whichever rank, worker process or resumed run draws the sample.
    """

    def __init__(self, dataset, transform: Callable, seed: int) -> None:
        self.dataset, self.transform, self.seed = dataset, transform, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        epoch, i = key if isinstance(key, tuple) else (0, key)
        x, y = self.dataset[i]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(hash((self.seed, epoch, i)) % 2**63)
            return self.transform(x), y


def sharded_loader(dataset, batch_size: int, workers: int, pin_memory: bool,
                   drop_last: bool) -> torch.utils.data.DataLoader:
    """A DataLoader over whatever indices its ShardSampler is given (``loader.sampler``)."""
    sampler = ShardSampler(with_epoch=isinstance(dataset, SeededTransform))
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, sampler=sampler,
                                       drop_last=drop_last, num_workers=workers,
                                       pin_memory=pin_memory, persistent_workers=False)
