"""Param server owns parameter-server training: parameters sharded on servers, pulled, pushed, sync or async.

The last P ranks are servers, the first W = N - P are workers. Each parameter tensor lives on
one server (:func:`shard_names`, balanced by size); a server keeps its shard as one flat
tensor with its own optimizer (an elementwise one such as SGD: momentum and weight decay then
act on the flat tensor exactly as on the separate tensors). Every worker step is: pull the
parameters from every server, compute the gradient of its own shard of the data, push each
server its part of the gradient. Messages go point to point with mpi4py on a duplicate of
``MPI.COMM_WORLD``; a pull reply is sent without blocking the server.

* ``--mode sync``: a server waits for the pushes of all W workers, averages them and steps
  once; a worker's next pull is answered after that step. The result is synchronous data
  parallelism over W workers (tested against the MNIST recipe to 1e-5).
* ``--mode async``: a server applies each push when it arrives (the gradient over W, with the
  same LR schedule, so W pushes move the weights as far as one synchronous step) and answers a
  pull at once, unless ``--max-staleness K`` holds it back: a worker may start step t only once
  every worker has pushed step t-K-1 (stale synchronous parallel). The staleness of every
  applied gradient (updates applied between its pull and its push) and how far workers ran ahead
  are reported.

Servers run the core's loop too (:class:`ParameterServerBackend`): a server's step is serving
messages until W more pushes are applied. Every rank thus reaches the loop's collectives (stop
signals, epoch metrics, checkpoints) at the same step, where every push before it has been
applied: checkpoints are consistent snapshots in both modes, and any rank that dies ends the
whole MPI job. Checkpoints hold the whole model by name (``common.strategies.spread_state``).
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
from common.config.strategies import ServerConfig
from common.faults.watchdog import beat
from common.frameworks.torch_backend import TorchBackend, counters, init, sums_finite
from common.monitor.metrics import MetricSums, StepTimes
from common.strategies.spread_state import SpreadState
from common.world.runtime import Runtime, mpi_world

_PULL, _PARAMS_META, _PARAMS, _PUSH_META, _PUSH = 101, 102, 103, 104, 105
_TRAIN, _EVAL = 0, 1


@dataclass(frozen=True)
class Roles:
    """Ranks 0..W-1 are workers, W..W+P-1 servers."""

    workers: int
    servers: int

    def is_server(self, rank: int) -> bool:
        return rank >= self.workers

    def server_rank(self, index: int) -> int:
        return self.workers + index


def shard_names(model: nn.Module, servers: int) -> list[list[str]]:
    """The parameter names each server holds (in model order): largest tensors first, each to
    the server holding the fewest elements so far."""
    params = list(model.named_parameters())
    if servers > len(params):
        raise ConfigError(f"--servers {servers} is more than the model's {len(params)} "
                          "parameter tensors")
    load, owner = [0] * servers, {}
    for name, p in sorted(params, key=lambda np_: -np_[1].numel()):
        target = min(range(servers), key=lambda s: (load[s], s))
        owner[name] = target
        load[target] += p.numel()
    return [[n for n, _ in params if owner[n] == s] for s in range(servers)]


def init_param_server(cfg: TrainConfig, sc: ServerConfig):
    """Start MPI and Horovod; return the runtime, the roles and the servers' communicator. A
    bad layout is a one-line error on every rank, before Horovod starts."""
    world = mpi_world("the parameter server (parameter_server.py)")
    n = world.Get_size()
    if sc.servers >= n:
        raise ConfigError(f"--servers {sc.servers} leaves no worker in a job of {n} rank(s); "
                          f"use at most {n - 1}")
    rt = init(cfg, comm=world)
    return rt, Roles(n - sc.servers, sc.servers), world.Dup()


class ParameterServerBackend(SpreadState, TorchBackend):
    """A worker or a server, as the core's loop sees it.

    ``model``: the whole model (built alike on every rank); ``make_optimizer(params)``: the
    servers' (elementwise) optimizer.
    """

    averages_gradients = False  # the strategy moves and averages gradients itself

    def __init__(self, rt: Runtime, cfg: TrainConfig, sc: ServerConfig, roles: Roles, comm,
                 model: nn.Module, make_optimizer: Callable[[list], torch.optim.Optimizer],
                 loss_fn: Callable, train_set, val_set, num_classes: int = 0) -> None:
        from mpi4py import MPI

        self.MPI, self.sc, self.roles, self.comm = MPI, sc, roles, comm
        self.is_server = roles.is_server(rt.rank)
        self.counts_samples = not self.is_server
        self.whole_signature = [[k, list(v.shape)] for k, v in model.state_dict().items()]
        self.shards = shard_names(model, roles.servers)
        params = dict(model.named_parameters())
        self.shapes = {n: p.shape for n, p in params.items()}
        optimizer = None
        if self.is_server:
            self.index = rt.rank - roles.workers
            self.names = self.shards[self.index]
            self.flat = nn.Parameter(torch.cat([params[n].detach().reshape(-1).clone()
                                                for n in self.names]))
            optimizer = make_optimizer([self.flat])
            self.version = 0  # updates applied
            self.pushes = [0] * roles.workers  # pushes received from each worker in this run
            self.round: dict[int, torch.Tensor] = {}  # sync: this round's gradients by worker
            self.pending: list[tuple[int, int]] = []  # pulls held back: (worker, clock)
            self.staleness: list[int] = []
            self.max_lead = 0
            self.replies: list = []  # pull replies in flight (request, buffer)
            self.applying_s = 0.0  # time spent applying gradients
        else:
            model = model.to(rt.device)
            self.clock = 0  # steps this worker has pushed in this run
            self.pulled = [0] * roles.servers  # the version of each server's last pull
        super().__init__(rt, cfg, model, optimizer, loss_fn, train_set, val_set,
                         num_classes=num_classes)
        self.times = StepTimes("server" if self.is_server else "worker")

    # --- layout ---------------------------------------------------------------------------------
    def data_parallel(self) -> tuple[int, int]:
        """Workers shard the data; servers take as many steps as workers (no data)."""
        return (0 if self.is_server else self.runtime().rank), self.roles.workers

    def describe(self) -> str:
        k = self.sc.max_staleness
        bound = "" if self.sc.mode == "sync" else f", max staleness {'none' if k is None else k}"
        return (f"{self.roles.workers} worker(s), {self.roles.servers} server(s), {self.sc.mode}"
                f"{bound}")

    def train_batches(self, epoch: int, samples_done: int):
        if self.is_server:
            return [None] * self.steps_left(samples_done)
        return super().train_batches(epoch, samples_done)

    def set_lr(self, lr: float) -> None:
        if self.is_server:
            super().set_lr(lr)

    # --- worker ---------------------------------------------------------------------------------
    def _pull(self, kind: int) -> None:
        """Send every server a pull request, then take each one's shard into the model."""
        for s in range(self.roles.servers):
            self.comm.Send(np.array([kind, self.clock], dtype=np.int64),
                           dest=self.roles.server_rank(s), tag=_PULL)
        params = dict(self.model.named_parameters())
        for s, names in enumerate(self.shards):
            meta = np.empty(1, dtype=np.int64)
            source = self.roles.server_rank(s)
            self.comm.Recv(meta, source=source, tag=_PARAMS_META)
            flat = torch.empty(sum(self.shapes[n].numel() for n in names))
            self.comm.Recv(flat.numpy(), source=source, tag=_PARAMS)
            self.pulled[s] = int(meta[0])
            with torch.no_grad():
                for name, part in zip(names, flat.split([self.shapes[n].numel() for n in names]),
                                      strict=True):
                    params[name].copy_(part.view(self.shapes[name]))

    def _push(self) -> None:
        params = dict(self.model.named_parameters())
        for s, names in enumerate(self.shards):
            grads = torch.cat([params[n].grad.reshape(-1) for n in names]).to("cpu").numpy()
            dest = self.roles.server_rank(s)
            self.comm.Send(np.array([self.clock, self.pulled[s]], dtype=np.int64), dest=dest,
                           tag=_PUSH_META)
            self.comm.Send(grads, dest=dest, tag=_PUSH)
            self.times.sent_bytes += grads.nbytes
        self.clock += 1

    def _worker_step(self, batch) -> torch.Tensor:
        began = time.perf_counter()
        self._pull(_TRAIN)
        pulled = time.perf_counter()
        x, y = (t.to(self.device, non_blocking=True) for t in batch)
        self.model.train()
        self.model.zero_grad()
        out = self.model(x)
        loss = self.loss_fn(out, y)
        loss.backward()
        computed = time.perf_counter()
        self._push()
        done = time.perf_counter()
        self.times.comm_s += (pulled - began) + (done - computed)
        self.times.step(done - began)
        return counters(out, y, loss, self.train_layout)

    # --- server ---------------------------------------------------------------------------------
    def _may_pull(self, clock: int) -> bool:
        if self.sc.mode == "sync":
            return self.version >= clock  # every push of the steps before it is applied
        k = self.sc.max_staleness
        return k is None or min(self.pushes) >= clock - k

    def _reply(self, worker: int, kind: int = _TRAIN) -> None:
        """Send ``worker`` this shard and its version without waiting (train pulls counted)."""
        flat = self.flat.detach().to("cpu").numpy().copy()
        meta = np.array([self.version], dtype=np.int64)
        for buf, tag in ((meta, _PARAMS_META), (flat, _PARAMS)):
            self.replies.append((self.comm.Isend(buf, dest=worker, tag=tag), buf))
        if kind == _TRAIN:
            self.times.sent_bytes += flat.nbytes
        self.replies = [(r, b) for r, b in self.replies if not r.Test()]

    def _apply(self, grad: torch.Tensor) -> None:
        began = time.perf_counter()
        self.flat.grad = grad
        self.optimizer.step()
        self.version += 1
        self.applying_s += time.perf_counter() - began

    def _serve_one(self) -> tuple[int, int]:
        """Handle the next message from any worker; returns (its tag, what it was: a kind)."""
        MPI = self.MPI
        status = MPI.Status()
        self.comm.Probe(source=MPI.ANY_SOURCE, tag=MPI.ANY_TAG, status=status)
        worker, tag = status.Get_source(), status.Get_tag()
        meta = np.empty(2, dtype=np.int64)
        if tag == _PULL:
            self.comm.Recv(meta, source=worker, tag=_PULL)
            kind, clock = int(meta[0]), int(meta[1])
            if kind == _EVAL:
                self._reply(worker, _EVAL)
            elif self._may_pull(clock):
                self.max_lead = max(self.max_lead, clock - min(self.pushes))
                self._reply(worker)
            else:
                self.pending.append((worker, clock))
            return tag, kind
        if tag != _PUSH_META:
            raise RuntimeError(f"parameter server: unexpected message (tag {tag}) from rank {worker}")
        self.comm.Recv(meta, source=worker, tag=_PUSH_META)
        grad = torch.empty_like(self.flat, requires_grad=False)
        self.comm.Recv(grad.detach().numpy(), source=worker, tag=_PUSH)
        self.pushes[worker] += 1
        workers = self.roles.workers
        if self.sc.mode == "sync":
            self.round[worker] = grad
            if len(self.round) == workers:
                total = self.round[0].clone()
                for w in range(1, workers):
                    total += self.round[w]
                self._apply(total / workers)
                self.round = {}
        else:
            self.staleness.append(self.version - int(meta[1]))
            self._apply(grad / workers)
        for held in [p for p in self.pending if self._may_pull(p[1])]:
            self.pending.remove(held)
            self.max_lead = max(self.max_lead, held[1] - min(self.pushes))
            self._reply(held[0])
        return tag, _TRAIN

    def _server_step(self) -> torch.Tensor:
        """Serve until W more pushes are applied; all but applying them is communication."""
        began, applied_before = time.perf_counter(), self.applying_s
        pushes = 0
        while pushes < self.roles.workers:
            tag, _ = self._serve_one()
            pushes += tag == _PUSH_META
        done = time.perf_counter()
        self.times.comm_s += done - began - (self.applying_s - applied_before)
        self.times.step(done - began)
        return self.zero_counters()

    # --- both -----------------------------------------------------------------------------------
    def train_step(self, batch) -> torch.Tensor:
        return self._server_step() if self.is_server else self._worker_step(batch)

    @torch.no_grad()
    def evaluate(self) -> MetricSums:
        """Workers pull the current parameters and validate their shard; servers answer them."""
        if not self.is_server:
            self._pull(_EVAL)
            return super().evaluate()
        answered = 0
        while answered < self.roles.workers:
            tag, kind = self._serve_one()
            answered += tag == _PULL and kind == _EVAL
            beat()
        return MetricSums(self.val_layout, np.zeros(self.val_layout.size))

    def weights_finite(self) -> bool:
        if self.is_server:
            return sums_finite([self.flat])
        return super().weights_finite()

    # --- the whole model's state, spread over the servers (common.strategies.spread_state) ---
    def _split(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        parts = flat.detach().split([self.shapes[n].numel() for n in self.names])
        return {n: p.reshape(self.shapes[n]).clone() for n, p in zip(self.names, parts, strict=True)}

    def part_state(self) -> dict | None:
        """A server's parameters and optimizer state, by name in the whole model; rank 0 (a
        worker) offers the model's buffers (batch norm's running statistics are the workers')."""
        if not self.is_server:
            if self.runtime().rank != 0:
                return None
            return {"model": {k: v.detach().clone() for k, v in self.model.named_buffers()},
                    "optimizer": {"state": {}, "param_groups": []}}
        sd = self.optimizer.state_dict()
        groups = [{k: v for k, v in g.items() if k != "params"} for g in sd["param_groups"]]
        state = {}
        for key, value in sd["state"].get(0, {}).items():
            if torch.is_tensor(value) and value.numel() == self.flat.numel():
                for name, part in self._split(value).items():
                    state.setdefault(name, {})[key] = part
            else:  # a scalar such as Adam's step count
                for name in self.names:
                    state.setdefault(name, {})[key] = value
        return {"model": self._split(self.flat), "optimizer": {"state": state,
                                                               "param_groups": groups}}

    def load_part(self, whole: dict) -> None:
        if not self.is_server:
            self.model.load_state_dict(whole["model"])
            return
        with torch.no_grad():
            self.flat.copy_(torch.cat([whole["model"][n].reshape(-1) for n in self.names]))
        named = whole["optimizer"]["state"]
        state = {}
        if all(n in named for n in self.names):
            for key, value in named[self.names[0]].items():
                if torch.is_tensor(value) and value.numel() == self.shapes[self.names[0]].numel():
                    state[key] = torch.cat([named[n][key].reshape(-1) for n in self.names])
                else:
                    state[key] = value
        group = {**whole["optimizer"]["param_groups"][0], "params": [0]}
        self.optimizer.load_state_dict({"state": {0: state} if state else {},
                                        "param_groups": [group]})

    def run_stats(self) -> dict:
        """Step times and bytes sent per rank; the staleness of the applied gradients and how
        far workers ran ahead, from every server (a collective)."""
        mine = (self.staleness, self.max_lead) if self.is_server else None
        found = [s for s in self.allgather_object(mine, name="staleness") if s is not None]
        applied = [v for s, _ in found for v in s]
        fields = {"strategy": f"parameter server ({self.sc.mode})", "servers": self.roles.servers,
                  "workers": self.roles.workers, "mode": self.sc.mode,
                  "max_staleness": self.sc.max_staleness,
                  "staleness_mean": float(np.mean(applied)) if applied else 0.0,
                  "staleness_max": int(max(applied)) if applied else 0,
                  "lead_max": max(lead for _, lead in found),
                  "bytes_counted": "point-to-point messages (pulls from servers, pushes to them)"}
        return self.times.record(self.allgather_object, **fields)
