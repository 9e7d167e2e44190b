"""Preemption owns stopping on a signal: any rank's, agreed at the next step, checkpointed, exit 75.

SLURM, Kubernetes and Ctrl-C stop a job with a signal (SIGTERM, SIGINT; SLURM's ``--signal``
sends SIGUSR1 ahead of a time limit). While a run trains, :class:`SignalWatch` turns those
signals into a request instead of an exception. The ranks agree on whether any of them got one
(one tiny allreduce of host memory; it does not wait for the GPU) after every optimizer step, or
every few steps when steps are short (about every :data:`AGREE_EVERY_S` seconds: the steps
between agreements are agreed in the same allreduce, so every rank takes part in the same ones),
so they stop together at the same step: the trainer writes a checkpoint of exactly that step
(mid-epoch, with every rank's RNG state and metric sums), rank 0 prints one line, and every
rank exits with :data:`EXIT_PREEMPTED`. Running the same command again resumes from it. A
signal that came while the worker was starting was held (``common.base.signals``) and is taken
at the first agreement.

A launcher that dies counts as a stop signal too: ``horovodrun`` (MPI mode, where it has
become ``sh -c mpirun ...``) exits on SIGTERM and leaves ``mpirun`` and the workers running,
orphaned. So each worker started under
``horovodrun`` on the launcher's host watches that process; when it is gone the worker acts as
on SIGHUP (the signal for "your controlling process went away"), and the job stops at the next
step with a checkpoint instead of training on unseen.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from common.base.errors import env_rank, say
from common.base.signals import die_of, take_held
from common.config.core import signal_number

EXIT_PREEMPTED = 75  # EX_TEMPFAIL: stopped on request, run again to continue
# Agree on stop signals about this often: a collective per step costs a Horovod cycle (about a
# millisecond), much for steps of a few milliseconds, nothing for steps of a second.
AGREE_EVERY_S = 0.25
MAX_STEPS_BETWEEN_AGREEMENTS = 1000


class Preempted(Exception):
    """Every rank stopped at the same step on a signal; the checkpoint of that step is saved."""

    exit_code = EXIT_PREEMPTED


class SignalWatch:
    """Signals become a request that the loop agrees on, instead of an interrupt.

    Use as a context manager around training (main thread only); the previous handlers come
    back on exit.
    """

    def __init__(self, names: tuple[str, ...] | list[str]) -> None:
        self.signals = [signal_number(n) for n in names]
        self.received: signal.Signals | None = None
        self.failure = False  # whether the last agreement found a failure beside the loop
        self._previous: dict = {}
        self.reset()

    def reset(self) -> None:
        """Agree at the next step (every rank calls this after a world change or a rollback)."""
        self._next_step = 0
        self._last: tuple[int, float] | None = None  # (step, time) of the last agreement

    def due(self, step: int) -> bool:
        """Whether the ranks agree on signals after ``step`` (the same answer on every rank)."""
        return bool(self.signals) and step >= self._next_step

    def __enter__(self) -> SignalWatch:
        if threading.current_thread() is threading.main_thread():
            for sig in self.signals:
                self._previous[sig] = signal.signal(sig, self._handle)
        early = take_held()  # a stop signal while the worker started (common.base.signals)
        if early is not None and self.received is None:
            if early not in self.signals:  # not a stop signal here: what it would have done
                die_of(early)
            self.received = early
        self._watching = threading.Event()
        launcher = launcher_process() if self.signals else None
        if launcher is not None:
            threading.Thread(target=self._watch_launcher, args=(launcher,), daemon=True,
                             name="launcher-watch").start()
        return self

    def __exit__(self, *exc) -> None:
        self._watching.set()
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _watch_launcher(self, launcher: tuple[int, str]) -> None:
        while not self._watching.wait(1.0):
            if _start_time(launcher[0]) != launcher[1]:
                say(f"rank {env_rank()}: the launcher (horovodrun, pid {launcher[0]}) is gone; "
                    "stopping at the next step as on SIGHUP")
                self.received = self.received or signal.SIGHUP
                return

    def _handle(self, signum, frame) -> None:
        self.received = signal.Signals(signum)

    def agreed(self, allreduce_sum: Callable[[np.ndarray], np.ndarray], rank: int,
               step: int = 0, failed: bool = False) -> str | None:
        """A collective after ``step``: None, or what stopped the job (``SIGTERM on rank 1``), on
        every rank. Rank 0 also sets when the next agreement is due, from its step time.
        ``failed``: this rank saw a failure beside the loop (rank 0's checkpoint writer), agreed
        in the same allreduce: :attr:`failure` is then True on every rank, and the caller has
        every rank learn what it was."""
        now = time.monotonic()
        mine = np.zeros(4)
        if self.received is not None:  # how many ranks got a signal; which one, and where
            mine[:2] = 1.0, float(self.received) * 4096 + rank
        mine[3] = float(failed)
        if rank == 0:
            every = 1
            if self._last is not None and step > self._last[0]:
                per_step = (now - self._last[1]) / (step - self._last[0])
                every = int(min(max(AGREE_EVERY_S / max(per_step, 1e-6), 1),
                                MAX_STEPS_BETWEEN_AGREEMENTS))
            mine[2] = every
        count, code, every, failures = allreduce_sum(mine)
        self._next_step, self._last = step + int(every), (step, now)
        self.failure = failures > 0
        if count == 0:
            return None
        if count > 1:  # the codes summed: say how many
            return f"signals on {int(count)} ranks"
        return f"{signal.Signals(int(code) // 4096).name} on rank {int(code) % 4096}"


def launcher_process() -> tuple[int, str] | None:
    """(pid, start time) of the outermost ``horovodrun`` this worker runs under on this host,
    if any: the command the user started.

    Under MPI, Horovod's launcher replaces itself with ``/bin/sh -c "mpirun ..."`` (the
    worker's grandparent); under Gloo it stays a Python process above a shell per worker. The
    installed ``horovodrun`` runs Horovod's launcher below itself
    (``common.launch.hvd_launch.horovodrun``): the workers watch it, the outer one."""
    pid, found = os.getppid(), None
    for _ in range(8):
        if pid <= 1:
            break
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            break
        horovodrun = any(part.endswith(b"/horovodrun") or part == b"horovodrun"
                         for part in cmdline[:2])
        shell_of_mpirun = (len(cmdline) > 2 and cmdline[0].endswith(b"sh")
                           and cmdline[1] == b"-c" and cmdline[2].startswith(b"mpirun "))
        if horovodrun or shell_of_mpirun:
            found = pid
        pid = _parent(pid)
    return (found, _start_time(found)) if found else None


def _parent(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return 0


def _start_time(pid: int) -> str:
    """A process's start time (so a reused pid is not mistaken for it); "" once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    fields = stat.rsplit(")", 1)[1].split()
    return "" if fields[0] == "Z" else fields[19]
