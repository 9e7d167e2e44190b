"""Runtime owns a process's place in the job: Horovod's init and runtime settings, rank/size, threads, device.

``init_horovod(hvd)`` takes the framework's Horovod module (``horovod.torch`` or
``horovod.tensorflow``) so that this module stays framework-agnostic. Under ``mpirun`` with an
mpi4py communicator (``comm``), Horovod runs on that communicator; otherwise on all processes
the launcher started. With ``--mpi-groups G`` (:func:`mpi_group`), one ``mpirun`` world is split
into G independent trainings, each on its own mpi4py sub-communicator.

Before ``hvd.init()`` the core chooses Horovod's and Open MPI's runtime settings for this host
(:func:`runtime_settings`) and sets each in the environment unless the user (or the launcher)
already set it there; what was used is :data:`SETTINGS`, shown in the run's configuration.
"""

from __future__ import annotations

import functools
import math
import os
import random
import sys
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.base.errors import AgreedError, UserError


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


# Each setting's value and who chose it ("environment", "core" or the flag), once init_horovod
# has run: the environment settings of runtime_settings, and the worker's CPU threads.
SETTINGS: dict[str, str] = {}
_chosen = False

# Horovod's cycle time (ms) under Gloo on CPU-only hosts: its background thread negotiates once
# per cycle, over TCP under Gloo, and the default of 1 ms wakes it 1,000 times a second on cores
# the workers' compute threads fill (docs/performance.md has what it was measured to do).
GLOO_CPU_CYCLE_TIME_MS = "5"
# The Open MPI transports horovodrun asks for (its own ``-mca btl ^openib``), and what the core
# asks for instead when every worker is on one host (see runtime_settings).
HOROVODRUN_BTL = "^openib"
ONE_HOST_BTL = "^openib,ofi"
# Gloo's own timeout (a wait for another rank; horovodrun --gloo-timeout-seconds, 30 s by
# default): under the stall watchdog it is set this much above --stall-timeout, so that the
# watchdog, which names the rank and leaves exit status 124, decides (the same rule as under MPI,
# which has no such timeout), not Gloo, which ends the job naming nobody.
GLOO_TIMEOUT_ENV = "HOROVOD_GLOO_TIMEOUT_SECONDS"
GLOO_TIMEOUT_MARGIN_S = 30
# Values a launcher sets by itself: not the user's choice, so the core's setting replaces them.
_LAUNCHER_DEFAULTS = {"OMPI_MCA_btl": HOROVODRUN_BTL, GLOO_TIMEOUT_ENV: "30"}


def cpu_cores(cgroup_fs: str = "/sys/fs/cgroup", proc_cgroup: str = "/proc/self/cgroup") -> int:
    """The cores this process may run on: its CPU affinity, capped by its cgroup's CPU quota
    rounded up (a container started with ``--cpus 1``, a Kubernetes CPU limit), which the
    affinity does not show: every container on a host would otherwise size its threads for all
    of the host's cores (docs/docker.md has what that cost)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    quota = cgroup_cpu_quota(cgroup_fs, proc_cgroup)
    return max(1, min(cores, math.ceil(quota))) if quota else cores


def cgroup_cpu_quota(cgroup_fs: str = "/sys/fs/cgroup",
                     proc_cgroup: str = "/proc/self/cgroup") -> float | None:
    """The CPU quota (in cores) of this process's cgroup and its ancestors, the smallest one;
    None when none is set or none can be read. cgroup v2 (``cpu.max``) and v1
    (``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``). Inside a container without a cgroup
    namespace the path in ``/proc/self/cgroup`` is the host's; the mount's root is the
    container's own cgroup then, so it is read too."""
    try:
        lines = Path(proc_cgroup).read_text().splitlines()
    except OSError:
        return None
    quotas = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":  # v2: one unified hierarchy
            dirs, read = [Path(cgroup_fs)], _cpu_max
        elif "cpu" in controllers.split(","):
            dirs, read = [Path(cgroup_fs, c) for c in (controllers, "cpu")], _cfs_quota
        else:
            continue
        parts = [p for p in path.split("/") if p]
        for base in dirs:
            for depth in range(len(parts) + 1):
                quota = read(base.joinpath(*parts[:depth]))
                if quota:
                    quotas.append(quota)
    return min(quotas) if quotas else None


def _cpu_max(folder: Path) -> float | None:
    try:
        limit, period = (folder / "cpu.max").read_text().split()[:2]
        return int(limit) / int(period) if limit != "max" else None
    except (OSError, ValueError):
        return None


def _cfs_quota(folder: Path) -> float | None:
    try:
        quota = int((folder / "cpu.cfs_quota_us").read_text())
        period = int((folder / "cpu.cfs_period_us").read_text())
        return quota / period if quota > 0 and period > 0 else None
    except (OSError, ValueError):
        return None


def launched_local_size(environ: Mapping[str, str]) -> int:
    """Workers on this host as the launcher announces them (before hvd.init can say): horovodrun,
    Open MPI's mpirun, MPICH's hydra; 1 if none does."""
    for name in ("HOROVOD_LOCAL_SIZE", "OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS"):
        if environ.get(name, "").isdigit():
            return max(int(environ[name]), 1)
    return 1


def launched_world_size(environ: Mapping[str, str]) -> int:
    """Workers in the whole job as the launcher announces them (1 if none does)."""
    for name in ("HOROVOD_SIZE", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE"):
        if environ.get(name, "").isdigit():
            return max(int(environ[name]), 1)
    return 1


def runtime_settings(local_size: int, cores: int, on_gpu: bool, controller: str = "mpi",
                     world_size: int | None = None, btl: str | None = None) -> dict[str, str]:
    """The Horovod and Open MPI environment settings the core wants on this host.

    * ``OMPI_MCA_mpi_yield_when_idle=1`` under MPI when the workers' threads fill the cores
      (always on a CPU-only host, where each worker gets cores / workers threads; on a GPU host
      when there are as many workers as cores): a rank waiting in MPI (Horovod's background
      thread, every cycle) yields its core instead of spinning on it. Open MPI does this by
      itself only when a host has more processes than slots.
    * ``HOROVOD_CYCLE_TIME`` (:data:`GLOO_CPU_CYCLE_TIME_MS`) under Gloo on CPU-only hosts:
      fewer negotiation rounds over TCP, each of which wakes every rank. Under MPI (with the
      yield) the cycle time made no difference, and on GPUs a step is too short to wait longer.
    * ``OMPI_MCA_btl`` :data:`ONE_HOST_BTL` under horovodrun's MPI when every worker is on this
      host (``world_size == local_size``) and the transports are horovodrun's own (``btl``):
      Open MPI's libfabric transport (ofi), which horovodrun leaves on, probes the fabric in each
      worker's MPI_Init (0.4 s) and waits 1 s in its MPI_Finalize, while shared memory carries
      all of a one-host job's traffic (measured 2026-12-06; docs/performance.md). Across hosts
      it stays on: there it may be the fabric's transport.
    """
    settings = {}
    if controller != "gloo" and (not on_gpu or local_size >= cores):
        settings["OMPI_MCA_mpi_yield_when_idle"] = "1"
    if controller == "gloo" and not on_gpu:
        settings["HOROVOD_CYCLE_TIME"] = GLOO_CPU_CYCLE_TIME_MS
    if controller != "gloo" and world_size == local_size and btl == HOROVODRUN_BTL:
        settings["OMPI_MCA_btl"] = ONE_HOST_BTL
    return settings


def apply_runtime_settings(wanted: Mapping[str, str],
                           environ: MutableMapping[str, str] = os.environ) -> dict[str, str]:
    """Set each wanted value in ``environ`` unless it is already there (the user's wins; a
    launcher's own default does not); return every setting as ``"value (who)"``."""
    used = {}
    for name, value in wanted.items():
        if name in environ and environ[name] != _LAUNCHER_DEFAULTS.get(name):
            used[name] = f"{environ[name]} (environment)"
        else:
            environ[name] = value
            used[name] = f"{value} (core)"
    return used


def stall_settings(stall_timeout: float,
                   environ: MutableMapping[str, str] = os.environ) -> dict[str, str]:
    """Under Gloo with the stall watchdog on (``--stall-timeout``; not in elastic mode, where
    Gloo's timeout is how a lost worker is found): Gloo's own timeout
    :data:`GLOO_TIMEOUT_MARGIN_S` above the stall timeout, unless the user chose one. Applied
    to ``environ`` before Horovod's init; returns it for the settings line."""
    if (environ.get("HOROVOD_CONTROLLER") != "gloo" or not stall_timeout
            or environ.get("HOROVOD_ELASTIC")):
        return {}
    wanted = str(math.ceil(stall_timeout) + GLOO_TIMEOUT_MARGIN_S)
    return apply_runtime_settings({GLOO_TIMEOUT_ENV: wanted}, environ)


def _gpu_visible() -> bool:
    """Whether the framework this process imported sees a GPU (without starting one)."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        return True
    tf = sys.modules.get("tensorflow")
    return tf is not None and bool(tf.config.list_physical_devices("GPU"))


def choose_runtime_settings() -> dict[str, str]:
    """Apply :func:`runtime_settings` for this host once, before MPI starts (Open MPI reads its
    settings when it initialises: in mpi4py's import or in hvd.init); return :data:`SETTINGS`."""
    global _chosen
    if not _chosen:
        _chosen = True
        SETTINGS.update(apply_runtime_settings(
            runtime_settings(launched_local_size(os.environ), cpu_cores(), _gpu_visible(),
                             os.environ.get("HOROVOD_CONTROLLER", "mpi"),
                             launched_world_size(os.environ), os.environ.get("OMPI_MCA_btl"))))
    return SETTINGS


def settings_line() -> str:
    """The runtime settings as one printed line ('' before any were chosen)."""
    return ("runtime settings: " + ", ".join(f"{k}={v}" for k, v in SETTINGS.items())
            if SETTINGS else "")


def init_horovod(hvd, comm=None, mpi_groups: int = 1, device: str = "cpu",
                 process_sets: list | None = None,
                 before_init: Callable[[], Mapping[str, str]] | None = None) -> Runtime:
    """Choose the runtime settings, initialise Horovod once (idempotent), describe this process.

    ``comm``: an mpi4py communicator to run Horovod on. ``mpi_groups`` > 1: run on this process's
    group of :func:`mpi_group` instead. ``process_sets``: Horovod ``ProcessSet``s to register
    (the same list on every rank; collectives then take ``process_set=``). ``before_init``: sets
    more of Horovod's variables just before its init and returns them for the settings line
    (``common.monitor.profiling.prepare``: ``--timeline-out``, ``--autotune``).
    """
    if not hvd.is_initialized():
        choose_runtime_settings()
        if before_init is not None:
            SETTINGS.update(before_init())
    if comm is None and mpi_groups > 1:
        comm = mpi_group(mpi_groups)[1]
    if not hvd.is_initialized():
        hvd.init(comm=comm, process_sets=process_sets or None)
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
    return max(1, cpu_cores() // max(local_size, 1))


def worker_threads(local_size: int, requested: int | None = None) -> int:
    """:func:`threads_per_worker` for this process's framework, recorded in :data:`SETTINGS`."""
    threads = threads_per_worker(local_size, requested)
    SETTINGS["threads_per_worker"] = (f"{threads} (--threads-per-worker)" if requested else
                                      f"{threads} (core: {cpu_cores()} cores / {local_size} worker(s))")
    return threads


def mpi_world(needed_by: str):
    """mpi4py's ``MPI.COMM_WORLD``, after the runtime settings (Open MPI reads them when mpi4py
    starts it); a one-line UserError naming ``needed_by`` (a flag or recipe) when this is not
    an MPI launch (Gloo's horovodrun starts its workers without MPI)."""
    choose_runtime_settings()
    try:
        from mpi4py import MPI
    except ImportError as e:
        raise UserError(f"{needed_by} needs mpi4py ({e})") from None
    world = MPI.COMM_WORLD
    launched = os.environ.get("HOROVOD_SIZE")  # set by horovodrun for each worker
    if launched is not None and int(launched) != world.Get_size():
        raise UserError(f"{needed_by} needs an MPI launch (mpirun, or horovodrun --mpi): MPI sees "
                        f"{world.Get_size()} process(es) but the launcher started {launched}")
    return world


@functools.cache
def mpi_group(groups: int):
    """Split ``MPI.COMM_WORLD`` into ``groups`` equal, contiguous groups: (this group's index, its comm).

    Collective over the whole MPI world on the first call (cached after), so every process must
    make it. World ranks 0..n-1 form group 0, the next n group 1, and so on. Needs an MPI launch
    (``mpirun``, ``srun --mpi=pmix`` or ``horovodrun --mpi``) and a Horovod built with MPI.
    """
    world = mpi_world("--mpi-groups")
    if world.Get_size() % groups:
        raise UserError(f"--mpi-groups {groups} must divide the number of MPI processes "
                        f"({world.Get_size()})")
    index = world.Get_rank() // (world.Get_size() // groups)
    return index, world.Split(color=index, key=world.Get_rank())
