"""Metrics owns exact cross-rank metrics: per-rank counters, their one allreduce, every metric's formula.

Each rank accumulates *counters* (summed loss, sample count, correct predictions per top-k and,
for small label sets, a confusion matrix); one allreduce of the counters gives true global
values even when ranks saw different numbers of samples. Averaging per-rank means instead would
weight a rank with 10 samples like one with 1,000.

A metric is a formula over global counters (:data:`METRICS`). To add one that the counters
already support (per-class recall, balanced accuracy: anything from the confusion matrix), add
one entry there; it is then averaged exactly, printed, recorded and sent to TensorBoard. The
backends fill the counters in :class:`CounterLayout` order on the device.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

# Confusion matrices are counted for label sets up to this size (n x n counters per batch).
MAX_CONFUSION_CLASSES = 100


@dataclass(frozen=True)
class CounterLayout:
    """The order of a rank's counters in one float64 vector: ``[loss_sum, count, correct@k...,
    confusion (true x predicted, row-major)]``; what backends fill and the allreduce sums."""

    topk: tuple[int, ...] = (1,)
    confusion_classes: int = 0  # 0: no confusion matrix

    @property
    def size(self) -> int:
        return 2 + len(self.topk) + self.confusion_classes**2

    def zeros(self) -> np.ndarray:
        return np.zeros(self.size, dtype=np.float64)


class MetricSums:
    """One rank's counters (or, after :meth:`global_sums`, every rank's), in a CounterLayout."""

    def __init__(self, layout: CounterLayout | None = None, values=None) -> None:
        self.layout = layout or CounterLayout()
        self.values = (self.layout.zeros() if values is None
                       else np.asarray(values, dtype=np.float64).copy())
        if self.values.shape != (self.layout.size,):
            raise ValueError(f"{self.values.shape[0]} counters do not fit {self.layout}")

    def add(self, mean_loss: float, correct, count: int) -> None:
        """Add a batch: its mean loss, its correct count (one per top-k, or a number), its size."""
        correct = [correct] if isinstance(correct, int | float) else list(correct)
        self.values[0] += float(mean_loss) * count
        self.values[1] += count
        self.values[2:2 + len(correct)] += np.asarray(correct, dtype=np.float64)

    def add_counters(self, counters) -> None:
        """Add a counter vector in this layout (from a backend's step)."""
        self.values += np.asarray(counters, dtype=np.float64)

    def to_array(self) -> np.ndarray:
        return self.values.copy()

    def global_sums(self, allreduce_sum: Callable[[np.ndarray], np.ndarray]) -> MetricSums:
        """Sum over all ranks (a collective: every rank must call it)."""
        return MetricSums(self.layout, allreduce_sum(self.values))

    @property
    def count(self) -> float:
        return float(self.values[1])

    @property
    def loss(self) -> float:
        return _ratio(self.values[0], self.count)

    @property
    def accuracy(self) -> float:
        """Top-1 accuracy (the first of ``topk``)."""
        return self.top(self.layout.topk[0])

    def top(self, k: int) -> float:
        return _ratio(self.values[2 + self.layout.topk.index(k)], self.count)

    def confusion(self) -> np.ndarray | None:
        n = self.layout.confusion_classes
        return self.values[2 + len(self.layout.topk):].reshape(n, n) if n else None

    def metrics(self) -> dict[str, float]:
        """Every metric these counters support, by name (``loss``, ``accuracy``, ``top5``...)."""
        values = {name: formula(self) for name, (applies, formula) in METRICS.items()
                  if applies(self.layout)}
        values.update({f"top{k}": self.top(k) for k in self.layout.topk[1:]})
        return values


def _ratio(a: float, b: float) -> float:
    return float(a) / b if b else float("nan")


def macro_f1(sums: MetricSums) -> float:
    """Mean over classes of F1 = 2 TP / (2 TP + FP + FN), over the classes that occur."""
    c = sums.confusion()
    tp = np.diag(c)
    support = c.sum(axis=1) + c.sum(axis=0)  # 2 TP + FN + FP
    present = support > 0
    if not present.any():
        return float("nan")
    return float(np.mean(2 * tp[present] / support[present]))


# name -> (does this counter layout support it?, formula over global counters); top-k
# accuracies beyond the first k are added as ``top<k>`` by MetricSums.metrics.
METRICS: dict[str, tuple[Callable[[CounterLayout], bool], Callable[[MetricSums], float]]] = {
    "loss": (lambda layout: True, lambda sums: sums.loss),
    "accuracy": (lambda layout: True, lambda sums: sums.accuracy),
    "macro_f1": (lambda layout: layout.confusion_classes > 0, macro_f1),
}


class Throughput:
    """Wall-clock seconds of a span, and samples per second over it."""

    def __init__(self) -> None:
        self.began = time.perf_counter()

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.began

    def rate(self, samples: float) -> float:
        return samples / max(self.elapsed, 1e-9)


class StepTimes:
    """One rank's train steps: their time, the part spent communicating (sending, receiving,
    waiting for an allreduce), and the bytes it sent; gathered once, at the end of a run."""

    def __init__(self, role: str = "worker") -> None:
        self.role = role
        self.steps, self.step_s, self.comm_s, self.sent_bytes = 0, 0.0, 0.0, 0.0

    def step(self, seconds: float) -> None:
        self.steps += 1
        self.step_s += seconds

    def end_step(self, began: float, waiting: float) -> None:
        """A step that began at ``began`` (``time.perf_counter``) ends now, and it waited for
        communication since ``waiting`` (the optimizer's wait for its allreduces)."""
        done = time.perf_counter()
        self.comm_s += done - waiting
        self.step(done - began)

    def record(self, allgather_object: Callable, **fields) -> dict:
        """Every rank's per-step means in rank order (a collective), and ``fields``."""
        every = allgather_object((self.role, self.steps, self.step_s, self.comm_s,
                                  self.sent_bytes), name="step_times")

        def per_step(i: int) -> list[float]:
            return [r[i] / max(r[1], 1) for r in every]

        return {**fields, "roles": [r[0] for r in every], "step_s_by_rank": per_step(2),
                "comm_s_by_rank": per_step(3), "bytes_sent_per_step_by_rank": per_step(4)}


def mean_ci95(values) -> tuple[float, float]:
    """Mean and half-width of a 95% interval (1.96 sample standard deviations) of measurements."""
    a = np.asarray(values, dtype=np.float64)
    return float(a.mean()), (float(1.96 * a.std(ddof=1)) if len(a) > 1 else 0.0)
