"""Pipeline owns model parallelism: a model cut into stages on several ranks, micro-batched, replicated.

A model given as an ``nn.Sequential`` is cut into S contiguous stages (:func:`partition`), one
per rank, and the pipeline is replicated R times for data parallelism: S x R ranks, rank
``replica * S + stage``. Each step (GPipe's schedule, Huang et al. 2019) splits the replica's
batch into M micro-batches: every stage runs the forward pass of all M, sending each
micro-batch's activations to the next stage, then the backward pass of all M in reverse order,
sending each activation's gradient back. Each stage's gradients are then averaged over its R
replicas by Horovod's DistributedOptimizer on that stage's process set (Horovod's
``ProcessSet``, registered at ``hvd.init``), so stage s of every replica steps alike.

Activations travel point to point with mpi4py (``Send``/``Recv`` on a duplicate of
``MPI.COMM_WORLD``): a pipeline boundary is a message from one rank to one other, which
Horovod has no collective for (a broadcast on a 2-rank process set would also wait for a
negotiation cycle of Horovod's background thread for every micro-batch and direction).
So the pipeline needs an MPI launch (``mpirun``, or ``horovodrun`` with its default MPI).

:class:`PipelineBackend` is the ``common.frameworks.backend.Backend`` of one stage: the core's loop, LR
schedule, metrics and checkpoints run unchanged. The stages of a replica share its data shard
(:meth:`PipelineBackend.data_parallel`); the last stage computes the loss and the metric
counters; checkpoints hold the whole model and optimizer by parameter name, gathered from the
stages of replica 0 (``common.strategies.spread_state``), so a run resumes on any layout.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from common.config.core import TrainConfig
from common.config.flags import ConfigError
from common.config.strategies import PipelineConfig
from common.frameworks.torch_backend import TorchBackend, counters, distributed_optimizer, hvd, init
from common.monitor.metrics import StepTimes
from common.strategies.spread_state import SpreadState, load_named_optimizer_state, named_optimizer_state
from common.world.runtime import Runtime, mpi_world

_TRAIN_TAG, _GRAD_TAG, _EVAL_TAG = 1 << 10, 2 << 10, 3 << 10


def has_parameters(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())


def partition(model: nn.Sequential, stages: int) -> list[list[str]]:
    """The names of ``model``'s children on each of ``stages`` stages, in order.

    Each stage gets a contiguous run of layers with parameters, as even in number as they
    divide; a layer without parameters (an activation, a pooling) goes with the layer before it.
    """
    names = [name for name, _ in model.named_children()]
    weighted = [i for i, (_, m) in enumerate(model.named_children()) if has_parameters(m)]
    if stages > len(weighted):
        raise ConfigError(f"--stages {stages} is more than the model's {len(weighted)} layers "
                          "with parameters")
    per_stage = np.array_split(np.arange(len(weighted)), stages)
    starts = [0] + [weighted[int(part[0])] for part in per_stage[1:]]
    ends = starts[1:] + [len(names)]
    return [names[a:b] for a, b in zip(starts, ends, strict=True)]


class Stage(nn.Module):
    """Some consecutive layers of a sequential model, under their names in the whole model (so
    ``state_dict`` keys are the whole model's)."""

    def __init__(self, model: nn.Sequential, names: list[str]) -> None:
        super().__init__()
        for name in names:
            self.add_module(name, getattr(model, name))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.children():
            x = layer(x)
        return x


def pipeline_layout(pc: PipelineConfig, world_size: int) -> PipelineLayout:
    """The layout on ``world_size`` ranks; ConfigError unless stages x replicas fill it."""
    replicas = pc.replicas or max(world_size // pc.stages, 1)
    if pc.stages * replicas != world_size:
        raise ConfigError(f"--stages {pc.stages} x --replicas {replicas} = "
                          f"{pc.stages * replicas} ranks, but the job has {world_size}")
    return PipelineLayout(pc.stages, replicas)


@dataclass(frozen=True)
class PipelineLayout:
    """Which rank runs which stage of which replica: rank = replica x stages + stage."""

    stages: int
    replicas: int

    def stage_of(self, rank: int) -> int:
        return rank % self.stages

    def replica_of(self, rank: int) -> int:
        return rank // self.stages

    def stage_ranks(self, stage: int) -> list[int]:
        """The ranks holding ``stage``, one per replica: the stage's process set."""
        return [replica * self.stages + stage for replica in range(self.replicas)]


def init_pipeline(cfg: TrainConfig, pc: PipelineConfig):
    """Start MPI and Horovod with one process set per stage (if replicated); return the runtime,
    the layout, this rank's stage's process set (None without replicas) and the pipeline's own
    communicator. Bad layouts are one-line errors on every rank, before Horovod starts."""
    world = mpi_world("the pipeline (hybrid_parallel.py)")
    layout = pipeline_layout(pc, world.Get_size())
    # Horovod registers neither 1-rank process sets nor one of every rank (the global set).
    sets = ([hvd.ProcessSet(layout.stage_ranks(s)) for s in range(layout.stages)]
            if layout.replicas > 1 and layout.stages > 1 else [])
    rt = init(cfg, comm=world, process_sets=sets)
    stage_set = (sets[layout.stage_of(rt.rank)] if sets else
                 hvd.global_process_set if layout.replicas > 1 else None)
    return rt, layout, stage_set, world.Dup()


class PipelineBackend(SpreadState, TorchBackend):
    """One stage of a replicated pipeline, as the core's loop sees it (``TorchBackend`` for the
    rest: RNG state, checkpoint files, loaders, TensorBoard).

    ``model``: the whole model as an ``nn.Sequential`` (built alike on every rank); this rank
    keeps its stage's layers. ``make_optimizer(params)``: the plain optimizer of a stage.
    """

    averages_gradients = False  # the strategy moves and averages gradients itself

    def __init__(self, rt: Runtime, cfg: TrainConfig, pc: PipelineConfig, layout: PipelineLayout,
                 stage_set, comm, model: nn.Sequential,
                 make_optimizer: Callable[[list], torch.optim.Optimizer], loss_fn: Callable,
                 train_set, val_set, num_classes: int = 0) -> None:
        self.layout, self.comm, self.micro_batches = layout, comm, pc.micro_batches
        self.stage = layout.stage_of(rt.rank)
        self.replica = layout.replica_of(rt.rank)
        self.first, self.last = self.stage == 0, self.stage == layout.stages - 1
        self.counts_samples = self.last
        self.whole_signature = [[k, list(v.shape)] for k, v in model.state_dict().items()]
        self.stage_names = partition(model, layout.stages)
        # Per-sample shape of what enters each stage (a probe through the whole model).
        x = train_set[0][0].unsqueeze(0)
        self.in_shapes = []
        model.eval()  # one sample: batch norm must not take batch statistics
        with torch.no_grad():
            for names in self.stage_names:
                self.in_shapes.append(tuple(x.shape[1:]))
                x = Stage(model, names)(x)
        model.train()
        module = Stage(model, self.stage_names[self.stage]).to(rt.device)
        self.param_names = [n for n, _ in module.named_parameters()]
        optimizer = make_optimizer(list(module.parameters()))
        if stage_set is not None:
            optimizer = distributed_optimizer(optimizer, module, cfg, process_set=stage_set,
                                              backward_passes=pc.micro_batches)
        super().__init__(rt, cfg, module, optimizer, loss_fn, train_set, val_set,
                         num_classes=num_classes)
        self.times = StepTimes(f"stage {self.stage}" if layout.stages > 1 else "worker")

    # --- layout ---------------------------------------------------------------------------------
    def data_parallel(self) -> tuple[int, int]:
        return self.replica, self.layout.replicas

    def describe(self) -> str:
        """The layout in words, and which layers each stage holds."""
        stages = " | ".join(",".join(names) for names in self.stage_names)
        return (f"{self.layout.stages} stage(s) x {self.layout.replicas} replica(s), "
                f"{self.micro_batches} micro-batch(es) per batch; stages: {stages}")

    # --- point to point -------------------------------------------------------------------------
    def _send(self, t: torch.Tensor, stage: int, tag: int) -> None:
        """Send to ``stage`` of this replica; train steps' traffic and time are counted."""
        began = time.perf_counter()
        data = np.ascontiguousarray(t.detach().to("cpu").numpy())
        self.comm.Send(data, dest=self.replica * self.layout.stages + stage, tag=tag)
        if tag != _EVAL_TAG:
            self.times.sent_bytes += data.nbytes
            self.times.comm_s += time.perf_counter() - began

    def _recv(self, shape: tuple, stage: int, tag: int) -> torch.Tensor:
        began = time.perf_counter()
        buf = torch.empty(shape, dtype=torch.float32)
        self.comm.Recv(buf.numpy(), source=self.replica * self.layout.stages + stage, tag=tag)
        if tag != _EVAL_TAG:
            self.times.comm_s += time.perf_counter() - began
        return buf.to(self.device)

    def _stage_input(self, x: torch.Tensor, tag: int) -> torch.Tensor:
        if self.first:
            return x.to(self.device, non_blocking=True)
        return self._recv((len(x), *self.in_shapes[self.stage]), self.stage - 1, tag)

    # --- training and evaluation ----------------------------------------------------------------
    def train_step(self, batch) -> torch.Tensor:
        """One optimizer step: GPipe's forward of every micro-batch, then backward in reverse;
        each micro-batch's loss weighted by its share of the batch, so the gradient is the
        batch mean; Horovod averages it over the stage's replicas in ``step``."""
        began = time.perf_counter()
        x, y = batch
        model, optimizer = self.model, self.optimizer
        model.train()
        optimizer.zero_grad()
        total = self.zero_counters()
        y = y.to(self.device, non_blocking=True)
        parts = list(zip(x.tensor_split(self.micro_batches), y.tensor_split(self.micro_batches),
                         strict=True))
        kept = []
        for m, (xm, ym) in enumerate(parts):
            inp = self._stage_input(xm, _TRAIN_TAG + m)
            inp.requires_grad_(not self.first)
            out = model(inp)
            if self.last:
                loss = self.loss_fn(out, ym)
                total = total + counters(out, ym, loss, self.train_layout)
                out = loss * (len(ym) / len(y))
            else:
                self._send(out, self.stage + 1, _TRAIN_TAG + m)
            kept.append((inp, out))
        for m in reversed(range(len(kept))):
            inp, out = kept[m]
            if self.last:
                out.backward()
            else:
                out.backward(self._recv(out.shape, self.stage + 1, _GRAD_TAG + m))
            if not self.first:
                self._send(inp.grad, self.stage - 1, _GRAD_TAG + m)
        waiting = time.perf_counter()  # the stage's gradient allreduce over its replicas
        optimizer.step()
        self.times.end_step(began, waiting)
        return total

    def val_counters(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor | None:
        """The last stage counts; the others pass the batch on (``TorchBackend.evaluate``)."""
        out = self.model(self._stage_input(x, _EVAL_TAG))
        if not self.last:
            self._send(out, self.stage + 1, _EVAL_TAG)
            return None
        y = y.to(self.device, non_blocking=True)
        return counters(out, y, self.loss_fn(out, y), self.val_layout)

    # --- the whole model's state, spread over the stages (common.strategies.spread_state) -----------------
    def part_state(self) -> dict | None:
        """Replica 0's stages offer their parameters and optimizer state, by name."""
        if self.replica != 0:
            return None
        return {"model": self.model.state_dict(),
                "optimizer": named_optimizer_state(self.optimizer, self.param_names)}

    def load_part(self, whole: dict) -> None:
        mine = self.model.state_dict()
        self.model.load_state_dict({k: v for k, v in whole["model"].items() if k in mine})
        load_named_optimizer_state(self.optimizer, self.param_names, whole["optimizer"])

    def run_stats(self) -> dict:
        """Each rank's step time, time communicating (point to point, and waiting for its
        stage's allreduce), and bytes sent per step: activations and their gradients, counted
        from the messages, plus 2(R-1)/R of the stage's gradient bytes for its allreduce."""
        r = self.layout.replicas
        grad_bytes = sum(p.numel() * p.element_size() for p in self.model.parameters())
        self.times.sent_bytes += self.times.steps * 2 * (r - 1) / r * grad_bytes
        return self.times.record(
            self.allgather_object, strategy="hybrid parallel", stages=self.layout.stages,
            replicas=r, micro_batches=self.micro_batches,
            bytes_counted="point-to-point messages + ring allreduce 2(R-1)/R x stage gradients")
