"""Writer owns rank 0's checkpoint write in the background (--checkpoint-mode async), one at a time.

Training goes on while a thread serialises, writes, fsyncs and renames the checkpoint
(``common.checkpoint.store``; the same atomic write, checksum and keep-K as a synchronous save).
What is written is a copy taken at the step, so the write never sees a later step's weights.
Whoever needs the file (the next save, a rollback, a stop, the end of the run) first calls
:meth:`BackgroundWriter.wait`; the write's error comes back from there, once, for the manager
to agree on with every rank. A process that dies mid-write leaves a temporary file (removed by
the next run's lock) and every earlier checkpoint as it was: the oldest is deleted only after the
new one is in place.
"""

from __future__ import annotations

import threading
from collections.abc import Callable


class BackgroundWriter:
    """At most one write in flight; :meth:`wait` returns its error ('' if it went well)."""

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._error = ""

    def submit(self, write: Callable[[], None]) -> None:
        """Start ``write()`` in the background (after the one in flight, if any, has ended: its
        error stays for :meth:`wait`). An exception it raises becomes the error, in words."""
        self._join()

        def run() -> None:
            try:
                write()
            except Exception as e:  # noqa: BLE001 - reported to every rank by the manager
                self._error = str(e) or type(e).__name__

        # Not a daemon: a process that ends normally finishes the write first, whoever called
        # save (the trainer waits anyway). One that fails ends with os._exit (run_main) and
        # does not wait: its temporary file is removed by the next run, and the earlier
        # checkpoints are untouched.
        self._thread = threading.Thread(target=run, name="checkpoint-writer", daemon=False)
        self._thread.start()

    @property
    def in_flight(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def failed(self) -> bool:
        """Whether a write has ended with an error not yet taken by :meth:`wait` (no waiting)."""
        return not self.in_flight and bool(self._error)

    def wait(self) -> str:
        """Wait for the write in flight; its error ('' if none, or nothing was written), once."""
        self._join()
        error, self._error = self._error, ""
        return error

    def _join(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
