"""Launch dir owns what a worker and a wrapping hvd-launch tell each other: ranks, exits, losses, restarts.

``common.launch.hvd_launch`` sets ``HVD_LAUNCH_DIR`` for the launcher it wraps; each worker
registers itself there at start (so a stop signal can reach it) and records how it ended.
Rank 0, when it runs on the wrapper's host, also records each rank it lost (its connection
dropped, or it stopped answering: :func:`record_lost`), wherever that rank ran: the wrapper
blames that rank's host (``hvd-launch --max-restarts`` leaves out a host that fails twice).
Without that variable all are no-ops. A relaunch by ``--max-restarts`` carries its number
and cause in the environment (:func:`restart`).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from common.base.errors import env_rank

LAUNCH_DIR_ENV = "HVD_LAUNCH_DIR"
# Set by ``hvd-launch --max-restarts`` on a relaunch: its number (1, 2, ...) and why.
RESTART_ENV = "HVD_LAUNCH_RESTART"
RESTART_CAUSE_ENV = "HVD_LAUNCH_RESTART_CAUSE"


def restart() -> tuple[int, str]:
    """Which relaunch of ``hvd-launch --max-restarts`` this job is (0: the first launch), and
    why it was relaunched."""
    try:
        attempt = int(os.environ.get(RESTART_ENV, "0"))
    except ValueError:
        attempt = 0
    return attempt, os.environ.get(RESTART_CAUSE_ENV, "")


def register_worker() -> None:
    """Tell a wrapping hvd-launch on this host that this process is a worker (pid and rank)."""
    folder = os.environ.get(LAUNCH_DIR_ENV)
    if folder and os.path.isdir(folder):
        try:
            Path(folder, f"{os.getpid()}.worker").write_text(env_rank())
        except OSError:
            pass


def record_exit(code: int) -> None:
    """Record this worker's exit status for a wrapping hvd-launch on this host."""
    folder = os.environ.get(LAUNCH_DIR_ENV)
    if folder and os.path.isdir(folder):
        try:
            Path(folder, f"{os.getpid()}.exit").write_text(f"{code} {env_rank()} {time.time()}")
        except OSError:
            pass


def record_lost(rank: int, why: str) -> None:
    """Rank 0 lost ``rank`` (``why``: "disconnected", "silent"); the first record of a rank stays."""
    folder = os.environ.get(LAUNCH_DIR_ENV)
    if folder and os.path.isdir(folder):
        path = Path(folder, f"lost-{rank}")
        if not path.exists():
            try:
                path.write_text(f"{time.time()} {why}")
            except OSError:
                pass


def lost_ranks(folder: str | Path, why: str | None = None) -> list[int]:
    """The ranks recorded by :func:`record_lost` in ``folder`` (only those lost ``why``, if
    given), the first lost first."""
    found = []
    for path in Path(folder).glob("lost-*"):
        try:
            when, reason = path.read_text().split()[:2]
            if why is None or reason == why:
                found.append((float(when), int(path.name[5:])))
        except (OSError, ValueError):
            continue
    return [rank for _, rank in sorted(found)]
