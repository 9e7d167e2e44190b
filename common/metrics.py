"""Metrics owns exact cross-rank averages (weighted by sample counts) and throughput.

Each rank accumulates *sums* (loss times samples, correct predictions, samples); one allreduce
of those sums gives the true global values even when ranks saw different numbers of samples.
Averaging per-rank means instead would weight a rank with 10 samples like one with 1,000.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np


@dataclass
class MetricSums:
    """Running sums on one rank: summed loss, sample count, and correct predictions per top-k.

    ``topk`` lists the k of each accuracy kept (top-1 first); ``correct[i]`` counts samples whose
    label is among the ``topk[i]`` highest scores.
    """

    topk: tuple[int, ...] = (1,)
    loss_sum: float = 0.0
    count: float = 0.0
    correct: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.correct:
            self.correct = [0.0] * len(self.topk)

    def add(self, mean_loss: float, correct, count: int) -> None:
        """Add a batch: its mean loss, its correct count (one per top-k, or a number), its size."""
        if isinstance(correct, int | float):
            correct = [correct]
        self.loss_sum += float(mean_loss) * count
        self.count += count
        for i, c in enumerate(correct):
            self.correct[i] += float(c)

    def to_array(self) -> np.ndarray:
        return np.array([self.loss_sum, self.count, *self.correct], dtype=np.float64)

    @classmethod
    def from_array(cls, a, topk: tuple[int, ...] = (1,)) -> MetricSums:
        a = np.asarray(a, dtype=np.float64)
        return cls(tuple(topk), float(a[0]), float(a[1]), [float(x) for x in a[2:]])

    def global_sums(self, allreduce_sum: Callable[[np.ndarray], np.ndarray]) -> MetricSums:
        """Sum over all ranks (a collective: every rank must call it)."""
        return MetricSums.from_array(allreduce_sum(self.to_array()), self.topk)

    @property
    def loss(self) -> float:
        return self.loss_sum / self.count if self.count else float("nan")

    @property
    def accuracy(self) -> float:
        """Top-1 accuracy (the first of ``topk``)."""
        return self.correct[0] / self.count if self.count else float("nan")

    def top(self, k: int) -> float:
        return self.correct[self.topk.index(k)] / self.count if self.count else float("nan")


class Throughput:
    """Wall-clock seconds of a span, and samples per second over it."""

    def __init__(self) -> None:
        self.start = time.perf_counter()

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def rate(self, samples: float) -> float:
        return samples / max(self.elapsed, 1e-9)


def mean_ci95(values) -> tuple[float, float]:
    """Mean and half-width of a 95% interval (1.96 sample standard deviations) of measurements."""
    a = np.asarray(values, dtype=np.float64)
    return float(a.mean()), (float(1.96 * a.std(ddof=1)) if len(a) > 1 else 0.0)
