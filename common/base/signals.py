"""Signals owns the stop signals that arrive before training: held from the first import of the core.

A stop signal (SIGTERM, SIGINT, SIGUSR1: the default ``--stop-signals``) that reaches a worker
while it is still starting (importing its framework, in ``hvd.init``, reading data, restoring a
checkpoint) would kill it with the signal's own status, before the training loop watches for
signals (``common.faults.preemption.SignalWatch``). So under a launcher (a rank's environment),
the first import of ``common`` holds such a signal instead: :func:`take_held` hands it to the
loop, which stops every rank at its first agreement, with a checkpoint, exit status 75. A second
signal while one is held ends the process as the signal would have, and so does a held signal
that no loop has taken after :data:`HOLD_LIMIT_S` (a script without the training loop: a
benchmark, a helper).

From the same moment the process registers itself with a wrapping ``hvd-launch``
(``common.base.launch_dir``), which sends its stop signals only to registered workers.
"""

from __future__ import annotations

import os
import signal
import threading

from common.base.errors import RANK_VARIABLES
from common.base.launch_dir import register_worker

# What a worker holds while it starts: the default --stop-signals (common.config.core takes them).
HELD_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)

# How long a held signal waits for a training loop to take it before it ends the process.
HOLD_LIMIT_S = 60.0

_held: signal.Signals | None = None
_taken = False


def hold_early() -> None:
    """Under a launcher, from now on a stop signal is held for the training loop (main thread
    only; a handler someone else installed is left alone)."""
    if not any(v in os.environ for v in RANK_VARIABLES):
        return
    if threading.current_thread() is threading.main_thread():
        for sig in HELD_SIGNALS:
            if signal.getsignal(sig) in (signal.SIG_DFL, signal.default_int_handler):
                signal.signal(sig, _hold)
    register_worker()


def _hold(signum, frame) -> None:
    global _held
    if _held is not None:  # a second signal: what it would have done without us
        die_of(signal.Signals(signum))
    _held = signal.Signals(signum)
    # A script whose loop never takes it (a benchmark, a helper) still ends of it, a little later.
    timer = threading.Timer(HOLD_LIMIT_S, _unclaimed, args=(_held,))
    timer.daemon = True
    timer.start()


def _unclaimed(sig: signal.Signals) -> None:
    if not _taken:  # the signal again: the handler, now in the main thread, ends the process
        os.kill(os.getpid(), sig)


def take_held() -> signal.Signals | None:
    """The stop signal this process got before its training loop watched for signals, once."""
    global _taken
    if _taken:
        return None
    _taken = True
    return _held


def ignore_after_the_run() -> None:
    """The run is complete: from now on a stop signal has nothing to stop, and is ignored (main
    thread only). Not held: while the interpreter shuts down Python puts its handlers back to
    the default action, and a stop signal in that last second (SLURM's warning arriving just
    after the final line) would end a finished run with the signal's status. An ignored signal
    stays ignored to the end."""
    if threading.current_thread() is threading.main_thread():
        for sig in HELD_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)


def die_of(sig: signal.Signals) -> None:
    """End this process as ``sig``'s default action would (Ctrl-C: KeyboardInterrupt)."""
    if sig == signal.SIGINT:
        raise KeyboardInterrupt
    signal.signal(sig, signal.SIG_DFL)
    os.kill(os.getpid(), sig)
