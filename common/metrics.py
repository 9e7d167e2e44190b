"""Metrics owns exact cross-rank averages (weighted by sample counts) and throughput.

Each rank accumulates *sums* (loss times samples, correct predictions, samples); one allreduce
of those sums gives the true global values even when ranks saw different numbers of samples.
Averaging per-rank means instead would weight a rank with 10 samples like one with 1,000.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass
class MetricSums:
    """Running sums on one rank: summed loss, correct predictions, sample count."""

    loss_sum: float = 0.0
    correct: float = 0.0
    count: float = 0.0

    def add(self, mean_loss: float, correct: float, count: int) -> None:
        self.loss_sum += float(mean_loss) * count
        self.correct += float(correct)
        self.count += count

    def to_array(self) -> np.ndarray:
        return np.array([self.loss_sum, self.correct, self.count], dtype=np.float64)

    @classmethod
    def from_array(cls, a) -> MetricSums:
        a = np.asarray(a, dtype=np.float64)
        return cls(float(a[0]), float(a[1]), float(a[2]))

    def global_sums(self, allreduce_sum: Callable[[np.ndarray], np.ndarray]) -> MetricSums:
        """Sum over all ranks (a collective: every rank must call it)."""
        return MetricSums.from_array(allreduce_sum(self.to_array()))

    @property
    def loss(self) -> float:
        return self.loss_sum / self.count if self.count else float("nan")

    @property
    def accuracy(self) -> float:
        return self.correct / self.count if self.count else float("nan")


class Throughput:
    """Samples per second over a timed span (wall clock, measured on each rank)."""

    def __init__(self) -> None:
        self.samples = 0
        self.start = time.perf_counter()

    def add(self, n: int) -> None:
        self.samples += n

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def rate(self, world_size: int = 1) -> float:
        """Global samples/s, given this rank's count and that all ranks process alike."""
        return self.samples * world_size / max(self.elapsed, 1e-9)
