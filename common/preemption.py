"""Preemption owns stopping on a signal: any rank's, agreed at the next step, checkpointed, exit 75.

SLURM, Kubernetes and Ctrl-C stop a job with a signal (SIGTERM, SIGINT; SLURM's ``--signal``
sends SIGUSR1 ahead of a time limit). While a run trains, :class:`SignalWatch` turns those
signals into a request instead of an exception. After every optimizer step all ranks agree on
whether any of them got one (one tiny allreduce of host memory; it does not wait for the GPU),
so they stop together at the same step: the trainer writes a checkpoint of exactly that step
(mid-epoch, with every rank's RNG state and metric sums), rank 0 prints one line, and every
rank exits with :data:`EXIT_PREEMPTED`. Running the same command again resumes from it.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable

import numpy as np

EXIT_PREEMPTED = 75  # EX_TEMPFAIL: stopped on request, run again to continue
DEFAULT_SIGNALS = ("TERM", "INT", "USR1")


def signal_number(name: str) -> signal.Signals:
    """``TERM``, ``SIGTERM`` or ``15`` as a signal; ValueError if there is none."""
    text = name.upper()
    if text.isdigit():
        return signal.Signals(int(text))
    return signal.Signals[text if text.startswith("SIG") else f"SIG{text}"]


class Preempted(Exception):
    """Every rank stopped at the same step on a signal; the checkpoint of that step is saved."""

    exit_code = EXIT_PREEMPTED


class SignalWatch:
    """Signals become a request that the loop agrees on, instead of an interrupt.

    Use as a context manager around training (main thread only); the previous handlers come
    back on exit.
    """

    def __init__(self, names: tuple[str, ...] | list[str] = DEFAULT_SIGNALS) -> None:
        self.signals = [signal_number(n) for n in names]
        self.received: signal.Signals | None = None
        self._previous: dict = {}

    def __enter__(self) -> SignalWatch:
        if threading.current_thread() is threading.main_thread():
            for sig in self.signals:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum, frame) -> None:
        self.received = signal.Signals(signum)

    def agreed(self, allreduce_sum: Callable[[np.ndarray], np.ndarray], rank: int) -> str | None:
        """A collective: None, or what stopped the job (``SIGTERM on rank 1``) on every rank."""
        mine = np.zeros(2)
        if self.received is not None:  # how many ranks got a signal; which one, and where
            mine[:] = 1.0, float(self.received) * 4096 + rank
        count, code = allreduce_sum(mine)
        if count == 0:
            return None
        if count > 1:  # the codes summed: say how many
            return f"signals on {int(count)} ranks"
        return f"{signal.Signals(int(code) // 4096).name} on rank {int(code) % 4096}"
