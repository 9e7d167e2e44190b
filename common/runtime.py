"""Runtime owns a process's place in the job: Horovod's init, rank/size, and per-rank threads and device.

``init_horovod(hvd)`` takes the framework's Horovod module (``horovod.torch`` or
``horovod.tensorflow``) so that this module stays framework-agnostic. Under ``mpirun`` with an
mpi4py communicator (``comm``), Horovod runs on that communicator; otherwise on all processes
the launcher started.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Runtime:
    """Where this process stands: global and local rank and size."""

    rank: int
    size: int
    local_rank: int
    local_size: int

    @property
    def is_root(self) -> bool:
        return self.rank == 0


def init_horovod(hvd, comm=None) -> Runtime:
    """Initialise Horovod once (idempotent) and describe this process."""
    if not hvd.is_initialized():
        if comm is not None:
            hvd.init(comm=comm)
        else:
            hvd.init()
    return Runtime(hvd.rank(), hvd.size(), hvd.local_rank(), hvd.local_size())


def threads_per_worker(local_size: int, requested: int | None = None) -> int:
    """CPU threads for one worker: the request, or this machine's cores split over local workers."""
    if requested:
        return requested
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, cores // max(local_size, 1))
