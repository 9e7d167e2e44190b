"""Backend owns the interface to a framework: what the loop, checkpoints and metrics ask of it.

The training loop (``common.loop.trainer``), the checkpoint manager (``common.checkpoint.manager``) and the
Keras callbacks are written once against :class:`Backend`. A framework implements it once for a
model, an optimizer and a data set: ``common.frameworks.torch_backend.TorchBackend`` and
``common.frameworks.tf_backend.TFBackend``. A new framework is a new subclass; nothing else changes.

Counters (``train_step``'s result) stay on the framework's device and are only read (a host
sync) when :meth:`read_counters` is called: once per epoch, at a mid-epoch checkpoint, or when a
progress bar refreshes (at most twice a second).
"""

from __future__ import annotations

import abc
import copy
import dataclasses
import os
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from common.config.core import TrainConfig
from common.config.flags import ConfigError, flag_name
from common.data.sharding import shard_indices
from common.faults import watchdog
from common.monitor import profiling
from common.monitor.metrics import MAX_CONFUSION_CLASSES, CounterLayout, MetricSums
from common.world.runtime import Runtime, init_horovod, require_adasum_support, stall_settings


def norm_stats(total: float, top: float, clipped: float, steps: int) -> dict:
    """The epoch record's fields of ``--clip-grad-norm`` from the sums of its steps."""
    return {"grad_norm_mean": total / steps, "grad_norm_max": top,
            "clipped_share": clipped / steps}


def check_optimizer_flags(cfg: TrainConfig, kind: str, momentum: float | None,
                          weight_decay: float | None) -> None:
    """ConfigError, alike on every rank, when an optimizer flag would not act: the recipe's
    optimizer (of class ``kind``) uses another momentum or weight decay than ``--momentum`` and
    ``--weight-decay`` say, or has no momentum while ``--momentum`` was given. ``momentum`` /
    ``weight_decay``: the optimizer's own (None: it has no such setting; the weight decay is
    None where the core adds it to the gradients itself, as the TensorFlow backend does).
    Each framework's ``sgd`` helper builds an optimizer from the flags."""
    opt = cfg.optimizer
    for name, want, have in (("momentum", opt.momentum, momentum),
                             ("weight_decay", opt.weight_decay, weight_decay)):
        if have is None:
            if name == "momentum" and name in cfg.changed:
                raise ConfigError(f"{flag_name(name)} {want:g} does not apply to {kind}, which "
                                  "has no momentum")
        elif abs(float(have) - want) > 1e-12 * max(1.0, abs(want)):
            raise ConfigError(f"{flag_name(name)} is {want:g} but the recipe's {kind} uses "
                              f"{float(have):g}: build it with the flag's value (cfg.optimizer."
                              f"{name}), or with the core's sgd(...) helper")


class Backend(abc.ABC):
    """One framework's model, optimizer and data, as the core sees them.

    Subclasses set ``hvd`` (their Horovod module) and ``checkpoint_suffix``; :meth:`__init__`
    sets the rest from the config: ``train_layout`` /
    ``val_layout`` (which metric counters they fill),
    ``samples_per_step`` (per rank), ``n_train`` / ``n_val``, ``checkpoint_suffix`` and
    ``notices`` (remarks for the user at the start of a run).
    """

    train_layout: CounterLayout = CounterLayout()
    val_layout: CounterLayout = CounterLayout()
    samples_per_step: int = 1
    n_train: int = 0
    n_val: int = 0
    checkpoint_suffix: str = "ckpt"
    notices: list[str]

    def __init__(self, rt: Runtime, cfg: TrainConfig, model, optimizer, loss_fn, n_train: int,
                 n_val: int, topk: tuple[int, ...] = (1,), num_classes: int = 0,
                 val_batch_size: int = 256) -> None:
        """``topk``: the accuracies to report (top-1 first); ``num_classes``: with up to
        ``MAX_CONFUSION_CLASSES`` classes validation also counts a confusion matrix."""
        self.device = rt.device
        self.cfg, self.model, self.optimizer, self.loss_fn = cfg, model, optimizer, loss_fn
        self.passes = cfg.gradients.batches_per_allreduce
        self.samples_per_step = cfg.run.batch_size * self.passes
        self.n_train, self.n_val, self.val_batch_size = n_train, n_val, val_batch_size
        self.train_layout = CounterLayout(tuple(topk))
        confusion = num_classes if 0 < num_classes <= MAX_CONFUSION_CLASSES else 0
        self.val_layout = CounterLayout(tuple(topk), confusion)
        self.notices = []

    def epoch_stats(self) -> dict[str, Any]:
        """Numbers of the epoch's steps that are the same on every rank (the averaged gradient's
        norm under ``--clip-grad-norm``), for the epoch record; read once per epoch, then reset."""
        return {}

    # --- the job and its collectives (every rank calls these) ---------------------------------
    hvd: Any  # the framework's Horovod module (horovod.torch, horovod.tensorflow)
    device: str = "cpu"

    def runtime(self) -> Runtime:
        """This process's rank and world now (it changes in elastic runs)."""
        return Runtime.current(self.hvd, self.device)

    @abc.abstractmethod
    def allreduce_sum(self, values: np.ndarray) -> np.ndarray:
        """Sum a float64 vector over all ranks."""

    def broadcast_object(self, obj: Any, root_rank: int = 0, name: str | None = None) -> Any:
        """Rank ``root_rank``'s picklable object on every rank."""
        return self.hvd.broadcast_object(obj, root_rank=root_rank, name=name)

    def allgather_object(self, obj: Any, name: str | None = None) -> list:
        """Every rank's picklable object, in rank order."""
        return self.hvd.allgather_object(obj, name=name)

    def elastic_run(self, func: Callable) -> Callable:
        """The framework's ``hvd.elastic.run``: re-run ``func(state)`` after a world change."""
        return self.hvd.elastic.run(func)

    # --- random number generators -----------------------------------------------------------
    @abc.abstractmethod
    def seed(self, seed: int) -> None:
        """Seed every RNG the framework's training uses."""

    @abc.abstractmethod
    def rng_state(self) -> dict:
        """This rank's RNG states, as something the checkpoint file format can hold."""

    @abc.abstractmethod
    def set_rng_state(self, state: dict) -> None: ...

    # --- model and optimizer state ----------------------------------------------------------
    @abc.abstractmethod
    def state(self) -> dict:
        """Model and optimizer state to checkpoint (may share memory with the live model)."""

    @abc.abstractmethod
    def snapshot(self) -> dict:
        """A copy of :meth:`state` that later training does not change (elastic commits)."""

    def host_copy(self, state: dict) -> dict:
        """A copy of ``state`` (:meth:`state_to_save`'s) in host memory that later training
        does not change: what an asynchronous checkpoint writes while training goes on."""
        return copy.deepcopy(state)

    @abc.abstractmethod
    def load_state(self, state: dict, source: str) -> None:
        """Load :meth:`state`'s output; raise CheckpointError naming ``source`` if it does not fit."""

    @abc.abstractmethod
    def weights_finite(self) -> bool:
        """Whether every model parameter is finite (no NaN or inf): checked before each save."""

    @abc.abstractmethod
    def signature(self) -> list[list]:
        """``[name, shape]`` of every saved tensor: what a checkpoint must match."""

    @abc.abstractmethod
    def broadcast_state(self) -> None:
        """Make every rank hold rank 0's model and optimizer state."""

    @abc.abstractmethod
    def write_checkpoint(self, f, record: dict) -> None:
        """Write a checkpoint record (``CheckpointManager.save``'s dict) to the open file ``f``."""

    @abc.abstractmethod
    def read_checkpoint(self, path: str) -> dict:
        """Read a record written by :meth:`write_checkpoint`; CheckpointError if it is not one."""

    # --- training and evaluation -------------------------------------------------------------
    @abc.abstractmethod
    def train_batches(self, epoch: int, samples_done: int) -> Iterable:
        """This rank's batches of ``epoch``, skipping the first ``samples_done`` samples of the
        epoch's global order (they were trained before a resume or a world change)."""

    @abc.abstractmethod
    def set_lr(self, lr: float) -> None: ...

    @abc.abstractmethod
    def train_step(self, batch) -> Any:
        """One optimizer step (Horovod averages the gradients); returns the batch's counters in
        ``train_layout`` order as a device vector, to be summed with ``+``."""

    @abc.abstractmethod
    def zero_counters(self) -> Any:
        """A device vector of zeros in ``train_layout``."""

    @abc.abstractmethod
    def read_counters(self, counters) -> np.ndarray:
        """Device counters as float64 numpy (a host sync)."""

    @abc.abstractmethod
    def evaluate(self) -> MetricSums:
        """This rank's validation counters over its shard (``val_layout``)."""

    @abc.abstractmethod
    def scalar_writer(self, log_dir: str):
        """A TensorBoard writer with ``add_scalar(tag, value, step)``, ``flush()``, ``close()``."""

    adasum_local_size: int = 1

    # --- shared by every backend ---------------------------------------------------------------
    # Whether this rank's samples count toward throughput: in a pipeline every stage of a replica
    # steps through the same samples, and only one stage counts them.
    counts_samples: bool = True

    def data_parallel(self) -> tuple[int, int]:
        """(this rank's replica, number of replicas): what shards the data and scales the LR.

        In data parallelism every rank is a replica; the stages of a pipeline (model
        parallelism, ``common.strategies.pipeline``) share their replica's shard."""
        rt = self.runtime()
        return rt.rank, rt.size

    def train_indices(self, seed: int, epoch: int, samples_done: int) -> np.ndarray:
        """This rank's training sample indices of ``epoch`` from global position ``samples_done``,
        cut to whole steps (see ``common.data.sharding.shard_indices``)."""
        rank, size = self.data_parallel()
        idx = shard_indices(self.n_train, rank, size, seed, epoch, samples_done=samples_done)
        return idx[: len(idx) - len(idx) % self.samples_per_step]

    def val_indices(self) -> np.ndarray:
        """This rank's validation sample indices: every sample once over all replicas."""
        rank, size = self.data_parallel()
        return shard_indices(self.n_val, rank, size, 0, 0, shuffle=False, drop_tail=False)

    def steps_per_epoch(self) -> int:
        """Optimizer steps in a whole epoch on the current world."""
        return (self.n_train // self.data_parallel()[1]) // self.samples_per_step

    def steps_left(self, samples_done: int) -> int:
        """Whole steps left in an epoch once ``samples_done`` samples of it are done."""
        return ((self.n_train - samples_done) // self.data_parallel()[1]) // self.samples_per_step

    def comm_seconds(self) -> float | None:
        """This rank's seconds spent communicating in train steps so far (a running total), or
        None where the framework gives no split (``common.monitor.balance``)."""
        return None

    def run_stats(self) -> dict:
        """The strategy's own numbers for the final record (bytes each rank sent per step, time
        spent communicating, staleness...). Every rank calls it at the end of a run; a backend
        that gathers them over ranks does so here, with collectives every rank makes."""
        return {}

    def state_to_save(self) -> dict | None:
        """What rank 0 writes into a checkpoint (:meth:`state` there, None elsewhere).

        A collective: every rank calls it before a save, so a backend whose state is spread
        over ranks (the stages of a pipeline) gathers it here."""
        return self.state() if self.runtime().is_root else None


def start_horovod(hvd, cfg: TrainConfig, comm=None, process_sets: list | None = None) -> Runtime:
    """A backend's Horovod init: the runtime settings, ``--timeline-out`` / ``--autotune``'s
    variables and ``--mpi-groups``, then ``hvd.init`` (``common.world.runtime.init_horovod``),
    then the stall watchdog in its start-up mode (``common.faults.watchdog``; not under
    Horovod elastic, which drops a worker that stops answering itself). With
    ``--stall-timeout``, no wait for the other ranks from here on is unbounded, and Gloo's own
    timeout waits longer than the watchdog (``common.world.runtime.stall_settings``)."""
    timeout = cfg.run.stall_timeout
    with watchdog.bounded("Horovod's start (hvd.init)", timeout):
        rt = init_horovod(hvd, comm, cfg.run.mpi_groups, process_sets=process_sets,
                          before_init=lambda: {**stall_settings(timeout), **profiling.prepare(
                              cfg.profiling, cfg.output.metrics_file)})
    if timeout and watchdog.active() is None and not os.environ.get("HOROVOD_ELASTIC"):
        watchdog.StallWatchdog(timeout, rt.rank, rt.size).start(
            lambda obj: hvd.allgather_object(obj, name="stall_watchdog"), starting=True)
    return rt


def placed(hvd, cfg: TrainConfig, rt: Runtime, device: str,
           seed_everything: Callable[[int], None]) -> Runtime:
    """The end of a backend's init once it chose this rank's device: Adasum refused where the
    launch cannot run it (a collective check), every RNG seeded, the runtime on that device."""
    if cfg.gradients.use_adasum:
        require_adasum_support(hvd, on_gpu=device != "cpu")
    seed_everything(cfg.run.seed)
    return dataclasses.replace(rt, device=device)
