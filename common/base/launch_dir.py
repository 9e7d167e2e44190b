"""Launch dir owns what a worker leaves for a wrapping hvd-launch on its host: pid, rank and exit status.

``common.launch.hvd_launch`` sets ``HVD_LAUNCH_DIR`` for the launcher it wraps; each worker
registers itself there at start (so a stop signal can reach it) and records how it ended.
Without that variable both are no-ops.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from common.base.errors import env_rank

LAUNCH_DIR_ENV = "HVD_LAUNCH_DIR"


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
