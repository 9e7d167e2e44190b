"""Balance owns per-epoch load balance: each rank's step time split, gathered once, and the straggler verdict.

Each rank times its epoch's train steps in three parts (:class:`EpochTimes`):

* ``data``: waiting for the next batch (the data loader's ``next``, on the host);
* ``comm``: what the backend reports as communication (:meth:`Backend.comm_seconds`): PyTorch's
  wait in ``optimizer.step`` for the allreduces backward did not hide; None where the
  framework gives no split (TensorFlow runs the allreduce inside its compiled step);
* ``compute``: the rest of the step (forward, backward, optimizer). Without a communication
  split, the shortest rank's step stands for every rank's compute, the rest for waiting.

Under synchronous allreduce every rank's step takes as long as the slowest rank's, so the ranks
are compared by their *busy* time (data + compute, without the communication wait): a straggler
is busy longer and waits less. Each rank's slowest tenth of steps is left out
(:func:`rank_times`): a one-off pause of one process is not a straggler. At each epoch's end
rank 0 gathers every rank's times and host (one small collective every rank makes) and
:func:`summarize` names the slowest rank, its host, the spread (slowest busy time / median busy
time), its main cause and the share of step time spent communicating. Times are host clocks: on
a GPU, where a step's work runs ahead of the host, they measure what the host waited for, not
the device's work.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

# A rank whose busy time exceeds the median by this factor is named on the epoch's line.
STRAGGLER_SPREAD = 1.25
# The share of each rank's slowest steps left out of its epoch's times (see rank_times).
PAUSE_TRIM = 0.1
# Fewer steps than this per rank (after the trim) are too few to call a rank a straggler: in a
# 4-step epoch one step of start-up or of the OS running something else is a quarter of it.
MIN_STEPS_TO_JUDGE = 16

# Test hook: "RANK:SECONDS" sleeps that long in RANK's data loading before every batch, to make
# a straggler on purpose (tests/jobs/monitoring/test_balance.py); "*:SECONDS" slows every rank
# alike, to stretch a run's time without its work (tests/jobs/slurm/test_slurm.py).
# Unset in real runs.
SLOW_DATA_ENV = "HOROVOD_RECIPES_TEST_SLOW_DATA"


@dataclass
class EpochTimes:
    """One rank's seconds in one epoch's train steps, step by step.

    ``comm_clock`` is the backend's running communication total (:meth:`Backend.comm_seconds`),
    read around each step; None, or a clock that answers None, gives no split."""

    comm_clock: Callable[[], float | None] | None = None
    data_by_step: list[float] = field(default_factory=list)
    step_by_step: list[float] = field(default_factory=list)  # compute + communication
    comm_by_step: list[float] | None = field(default_factory=list)
    _data: float = 0.0

    def __post_init__(self) -> None:
        if self.comm_clock is None or self.comm_clock() is None:
            self.comm_by_step = None

    @property
    def steps(self) -> int:
        return len(self.step_by_step)

    @property
    def data_s(self) -> float:
        return sum(self.data_by_step)

    @property
    def step_s(self) -> float:
        return sum(self.step_by_step)

    def batches(self, batches: Iterable, rank: int) -> Iterator:
        """``batches``, timing each wait for the next one (and the test hook's sleep)."""
        delay = _test_delay(rank)
        it = iter(batches)
        while True:
            began = time.perf_counter()
            if delay:
                time.sleep(delay)
            try:
                batch = next(it)
            except StopIteration:
                return
            self._data = time.perf_counter() - began
            yield batch

    def timed_step(self, step: Callable, batch):
        comm_before = self.comm_clock() if self.comm_by_step is not None else None
        began = time.perf_counter()
        out = step(batch)
        self.step_by_step.append(time.perf_counter() - began)
        self.data_by_step.append(self._data)
        self._data = 0.0
        if comm_before is None or self.comm_by_step is None:
            self.comm_by_step = None
        else:
            self.comm_by_step.append(self.comm_clock() - comm_before)
        return out


def _test_delay(rank: int) -> float:
    spec = os.environ.get(SLOW_DATA_ENV, "")
    if not spec:
        return 0.0
    who, _, seconds = spec.partition(":")
    return float(seconds) if who == "*" or (who.isdigit() and int(who) == rank) else 0.0


def rank_times(times: EpochTimes, trim: float = PAUSE_TRIM) -> tuple:
    """What each rank contributes to the epoch's gather: host, steps, data, compute, comm, summed
    over its steps without the slowest ``trim`` share of them (by busy time, data + compute).

    A pause of the whole process (the OS running another process on its core, a page fault, a
    collector) lands on one rank's one or two steps; in a short epoch it alone would name a
    straggler. A straggler is slow on most of its steps and stays slow without its slowest tenth."""
    comms = times.comm_by_step
    computes = [max(s - (comms[i] if comms is not None else 0.0), 0.0)
                for i, s in enumerate(times.step_by_step)]
    busy = [d + c for d, c in zip(times.data_by_step, computes, strict=True)]
    kept = sorted(range(len(busy)), key=busy.__getitem__)[:len(busy) - int(len(busy) * trim)]
    comm = None if comms is None else sum(comms[i] for i in kept)
    return (socket.gethostname(), len(kept), sum(times.data_by_step[i] for i in kept),
            sum(computes[i] for i in kept), comm)


def summarize(every: list[tuple], threshold: float = STRAGGLER_SPREAD) -> dict:
    """The epoch record's load-balance fields from every rank's :func:`rank_times` (rank order)."""
    per_step = []
    for host, steps, data, compute, comm in every:
        n = max(steps, 1)
        per_step.append((host, data / n, compute / n, None if comm is None else comm / n))
    if any(m is None for *_, m in per_step):
        # No split (TensorFlow): a rank's step time above the shortest one counts as waiting
        # for the others. This finds a rank slow in data loading or before its step; a rank
        # slow inside the step makes every step slow alike and cannot be told apart.
        shortest = min(c for _, _, c, _ in per_step)
        per_step = [(h, d, shortest, None) for h, d, _, _ in per_step]
    busy = [d + c for _, d, c, _ in per_step]
    order = sorted(range(len(busy)), key=busy.__getitem__)
    median = _median(busy)
    slow, fast = order[-1], order[0]
    spread = busy[slow] / median if median > 0 else 1.0
    comms = [m for *_, m in per_step]
    measured = all(m is not None for m in comms)
    totals = [b + (m or 0.0) for b, m in zip(busy, comms, strict=True)]
    comm_share = (sum(comms) / sum(totals) if measured and sum(totals) > 0 else None)
    host, data, compute, comm = per_step[slow]
    step = data + compute + (comm or 0.0)
    cause = "data loading" if data >= compute else "compute"
    share = (data if cause == "data loading" else compute) / step if step > 0 else 0.0
    fields = {
        "balance_spread": spread, "slowest_rank": slow, "slowest_host": host,
        "fastest_rank": fast, "fastest_host": per_step[fast][0],
        "comm_share": comm_share,
        "data_s_per_step_by_rank": [d for _, d, _, _ in per_step],
        "compute_s_per_step_by_rank": [c for _, _, c, _ in per_step],
        "comm_s_per_step_by_rank": comms,
        "straggler": None,
    }
    judged = min(steps for _, steps, *_ in every) >= MIN_STEPS_TO_JUDGE
    if len(busy) > 1 and spread > threshold and judged:
        fields["straggler"] = (f"rank {slow} on {host} is {spread:.1f}x slower than the median: "
                               f"{cause} {share:.0%} of its step")
    return fields


def _median(values: list[float]) -> float:
    s = sorted(values)
    mid = len(s) // 2
    return s[mid] if len(s) % 2 else (s[mid - 1] + s[mid]) / 2
