"""Runtime owns a process's place in the job: Horovod's init, rank/size, and per-rank threads and device.

``init_horovod(hvd)`` takes the framework's Horovod module (``horovod.torch`` or
``horovod.tensorflow``) so that this module stays framework-agnostic. Under ``mpirun`` with an
mpi4py communicator (``comm``), Horovod runs on that communicator; otherwise on all processes
the launcher started. With ``--mpi-groups G`` (:func:`mpi_group`), one ``mpirun`` world is split
into G independent trainings, each on its own mpi4py sub-communicator.
"""

from __future__ import annotations

import functools
import os
import random
from dataclasses import dataclass

import numpy as np

from common.failure import AgreedError, UserError


@dataclass(frozen=True)
class Runtime:
    """Where this process stands: global and local rank and size, and its device (``"cpu"``,
    ``"cuda:0"``; for PyTorch's ``.to(rt.device)``)."""

    rank: int
    size: int
    local_rank: int
    local_size: int
    device: str = "cpu"

    @classmethod
    def current(cls, hvd, device: str = "cpu") -> Runtime:
        """The world as Horovod sees it now (it changes in elastic runs)."""
        return cls(hvd.rank(), hvd.size(), hvd.local_rank(), hvd.local_size(), device)

    @property
    def is_root(self) -> bool:
        return self.rank == 0


def init_horovod(hvd, comm=None, mpi_groups: int = 1, device: str = "cpu") -> Runtime:
    """Initialise Horovod once (idempotent) and describe this process.

    ``comm``: an mpi4py communicator to run Horovod on. ``mpi_groups`` > 1: run on this process's
    group of :func:`mpi_group` instead.
    """
    if comm is None and mpi_groups > 1:
        comm = mpi_group(mpi_groups)[1]
    if not hvd.is_initialized():
        if comm is not None:
            hvd.init(comm=comm)
        else:
            hvd.init()
    return Runtime.current(hvd, device)


def require_adasum_support(hvd, on_gpu: bool) -> None:
    """Stop every rank with one line when this launch cannot run Adasum (a collective check).

    Horovod runs Adasum over MPI, or over NCCL on GPUs; under Gloo it has none and would fail
    at the first allreduce with a traceback."""
    if hvd.mpi_enabled() or (on_gpu and hvd.nccl_built()):
        return
    raise AgreedError("--use-adasum needs an MPI launch (mpirun, or horovodrun without --gloo): "
                      "this Horovod runs Adasum over MPI, or over NCCL on GPUs, not over Gloo",
                      lambda: hvd.broadcast_object(None, root_rank=0, name="adasum_check"))


def seed_host_rngs(seed: int) -> None:
    """Seed Python's and numpy's global RNGs (a backend seeds its framework's too)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)


def threads_per_worker(local_size: int, requested: int | None = None) -> int:
    """CPU threads for one worker: the request, or this machine's cores split over local workers."""
    if requested:
        return requested
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, cores // max(local_size, 1))


@functools.cache
def mpi_group(groups: int):
    """Split ``MPI.COMM_WORLD`` into ``groups`` equal, contiguous groups: (this group's index, its comm).

    Collective over the whole MPI world on the first call (cached after), so every process must
    make it. World ranks 0..n-1 form group 0, the next n group 1, and so on. Needs an MPI launch
    (``mpirun``, ``srun --mpi=pmix`` or ``horovodrun --mpi``) and a Horovod built with MPI.
    """
    try:
        from mpi4py import MPI
    except ImportError as e:
        raise UserError(f"--mpi-groups needs mpi4py ({e})") from None
    world = MPI.COMM_WORLD
    launched = os.environ.get("HOROVOD_SIZE")  # set by horovodrun for each worker
    if launched is not None and int(launched) != world.Get_size():
        raise UserError(f"--mpi-groups needs an MPI launch (mpirun, or horovodrun --mpi): MPI sees "
                        f"{world.Get_size()} process(es) but the launcher started {launched}")
    if world.Get_size() % groups:
        raise UserError(f"--mpi-groups {groups} must divide the number of MPI processes "
                        f"({world.Get_size()})")
    index = world.Get_rank() // (world.Get_size() // groups)
    return index, world.Split(color=index, key=world.Get_rank())
