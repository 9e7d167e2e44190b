"""Torch backend owns PyTorch for the core: Horovod init, the DistributedOptimizer, and the loop's Backend.

``init`` starts Horovod and pins threads and a device per rank; ``distributed_optimizer`` wraps
an optimizer in Horovod's ``DistributedOptimizer`` with the core's gradient flags;
:class:`TorchBackend` is the ``common.frameworks.backend.Backend`` of a model, optimizer and datasets:
train and eval steps (gradient accumulation, mixed precision), state broadcast, RNG state and
the checkpoint file format (``torch.save``, read with ``torch.load(weights_only=True)``).
"""

from __future__ import annotations

import copy
import random
import time
from collections.abc import Callable

import horovod.torch as hvd
import numpy as np
import torch

from common.base.errors import UserError
from common.base.files import CheckpointError, verified, with_checksum
from common.config.core import ConfigError, TrainConfig
from common.data.datasets import ArrayDataset
from common.faults.watchdog import beat
from common.frameworks import torch_sync_bn
from common.frameworks.backend import (
    Backend,
    check_optimizer_flags,
    norm_stats,
    placed,
    start_horovod,
)
from common.frameworks.torch_data import sharded_loader
from common.monitor.metrics import CounterLayout, MetricSums, StepTimes
from common.monitor.output import tensorboard_without_tensorflow
from common.world.runtime import Runtime, seed_host_rngs, worker_threads

CHECKPOINT_FORMAT = "horovod-recipes/torch/1"


def seed_everything(seed: int) -> None:
    seed_host_rngs(seed)
    torch.manual_seed(seed)


def init(cfg: TrainConfig, comm=None, process_sets: list | None = None) -> Runtime:
    """Initialise Horovod, pin threads and device for this rank, seed every RNG from the seed."""
    rt = start_horovod(hvd, cfg, comm, process_sets)
    torch.set_num_threads(worker_threads(rt.local_size, cfg.run.threads_per_worker))
    device = "cpu"
    if torch.cuda.is_available():
        # One GPU per rank: GPU local_rank, or the task's own GPU when the scheduler shows each
        # task only its own (SLURM's --gpus-per-task, CUDA_VISIBLE_DEVICES per rank).
        index = rt.local_rank % torch.cuda.device_count()
        torch.cuda.set_device(index)
        device = f"cuda:{index}"
    return placed(hvd, cfg, rt, device, seed_everything)


def distributed_optimizer(optimizer: torch.optim.Optimizer, model: torch.nn.Module,
                          cfg: TrainConfig, process_set=None,
                          backward_passes: int = 1) -> torch.optim.Optimizer:
    """Wrap ``optimizer`` in Horovod's DistributedOptimizer with the core's gradient options.

    ``process_set``: average over that Horovod process set only (one pipeline stage's
    replicas); ``backward_passes``: backward calls per batch pass (a pipeline's micro-batches)."""
    g = cfg.gradients
    return hvd.DistributedOptimizer(
        optimizer,
        named_parameters=model.named_parameters(),
        compression=hvd.Compression.fp16 if g.fp16_allreduce else hvd.Compression.none,
        backward_passes_per_step=g.batches_per_allreduce * backward_passes,
        op=hvd.Adasum if g.use_adasum else hvd.Average,
        gradient_predivide_factor=g.gradient_predivide_factor,
        process_set=process_set or hvd.global_process_set,
    )


def sgd(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """The flags' SGD (``--base-lr``, ``--momentum``, ``--weight-decay``) over ``model``'s
    parameters, already Horovod's DistributedOptimizer (:func:`distributed_optimizer`)."""
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.schedule.base_lr,
                                momentum=cfg.optimizer.momentum,
                                weight_decay=cfg.optimizer.weight_decay)
    return distributed_optimizer(optimizer, model, cfg)


def optimizer_settings(optimizer: torch.optim.Optimizer) -> tuple[float | None, float | None]:
    """The momentum and weight decay an optimizer applies (None where it has none): its
    first parameter group's ``momentum`` (SGD, RMSprop) and ``weight_decay``."""
    group = optimizer.param_groups[0] if optimizer.param_groups else {}
    return group.get("momentum"), group.get("weight_decay")


def allreduce_sum(values: np.ndarray) -> np.ndarray:
    """Sum a float64 vector over all ranks (a collective)."""
    t = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float64))
    return hvd.allreduce(t, op=hvd.Sum, name="metric_sums").numpy()


def broadcast_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Make every rank hold rank 0's parameters and optimizer state (a collective)."""
    # Horovod initialises an empty optimizer state with a zero-gradient step before it can
    # broadcast it, and that step moves parameters under weight decay. Fresh optimizers are
    # identical on every rank, so broadcast optimizer state only when rank 0 has some.
    root_has_state = hvd.broadcast_object(
        len(optimizer.state_dict()["state"]) > 0, root_rank=0, name="has_opt_state")
    if root_has_state:
        hvd.broadcast_optimizer_state(optimizer, root_rank=0)
    hvd.broadcast_parameters(model.state_dict(), root_rank=0)


def _as_tuple(x):
    return tuple(_as_tuple(v) for v in x) if isinstance(x, list | tuple) else x


class Precision:
    """Mixed precision for train steps: bf16 autocast on CUDA, or fp16 with a grad scaler.

    On CPU ``--amp`` is ignored (``enabled`` False) and :attr:`notice` says so.
    """

    def __init__(self, amp: bool, device: str | torch.device) -> None:
        device = torch.device(device)
        self.notice = None
        self.enabled = amp and device.type == "cuda"
        if amp and not self.enabled:
            self.notice = "--amp ignored: no CUDA device, training in fp32"
        self.device_type = device.type
        self.dtype = torch.float32
        self.scaler = None
        if self.enabled:
            if torch.cuda.is_bf16_supported():
                self.dtype = torch.bfloat16
            else:
                self.dtype = torch.float16
                self.scaler = torch.amp.GradScaler("cuda")

    def autocast(self):
        return torch.autocast(self.device_type, dtype=self.dtype, enabled=self.enabled)


def counters(out: torch.Tensor, y: torch.Tensor, loss: torch.Tensor,
             layout: CounterLayout) -> torch.Tensor:
    """A batch's metric counters in ``layout`` order, on the device (no host sync)."""
    out, n = out.detach().float(), len(y)
    k_max = min(max(layout.topk), out.shape[1])
    ranked = out.topk(k_max, dim=1).indices
    hits = ranked == y[:, None]
    parts = [loss.detach().double().reshape(1) * n, loss.new_full((1,), n, dtype=torch.float64),
             *(hits[:, :k].any(dim=1).sum().double().reshape(1) for k in layout.topk)]
    if layout.confusion_classes:
        c = layout.confusion_classes
        parts.append(torch.bincount(y * c + ranked[:, 0], minlength=c * c).double())
    return torch.cat(parts)


class GradNorms:
    """The averaged gradient's norm before clipping, summed on the device step by step (no host
    read in a step): the epoch's mean, max and share of steps clipped."""

    def __init__(self, device) -> None:
        self.device = device
        self.reset()

    def reset(self) -> None:
        self.values = torch.zeros(3, dtype=torch.float64, device=self.device)  # sum, max, clipped
        self.steps = 0

    def add(self, norm: torch.Tensor, clip: float) -> None:
        n = norm.to(torch.float64)
        self.values = torch.stack([self.values[0] + n, torch.maximum(self.values[1], n),
                                   self.values[2] + (n > clip).to(torch.float64)])
        self.steps += 1

    def read(self) -> dict:
        if not self.steps:
            return {}
        total, top, clipped = self.values.cpu().tolist()
        stats = norm_stats(total, top, clipped, self.steps)
        self.reset()
        return stats


def require_distributed(optimizer: torch.optim.Optimizer, workers: int) -> None:
    """UserError, alike on every rank, for an optimizer that would not average the gradients
    over the workers: each would train a model of its own and the run would look fine."""
    if not callable(getattr(optimizer, "synchronize", None)):
        raise UserError(f"the optimizer ({type(optimizer).__name__}) is not Horovod's "
                        f"DistributedOptimizer, so each of the {workers} workers would train a "
                        "model of its own; wrap it: optimizer = distributed_optimizer(optimizer, "
                        "model, cfg) (common.frameworks.torch_backend)")


def as_tensors(data: ArrayDataset) -> torch.utils.data.TensorDataset:
    """An in-memory ArrayDataset as torch tensors (shared with the arrays where they allow)."""
    return torch.utils.data.TensorDataset(torch.from_numpy(np.ascontiguousarray(data.inputs)),
                                          torch.from_numpy(np.ascontiguousarray(data.labels)))


def sums_finite(tensors) -> bool:
    """Whether every value of ``tensors`` is finite, read with one device sync: each tensor's
    sum in float64 (no finite float32 values overflow it; a NaN or inf makes it NaN or inf).
    A ResNet-50's parameters: 0.02 s on one CPU thread, against 0.12 s for
    ``isfinite(p).all()`` per tensor (2026-12-07); every save checks them."""
    sums = [t.detach().sum(dtype=torch.float64) for t in tensors]
    return bool(torch.isfinite(torch.stack(sums).sum())) if sums else True


class TorchBackend(Backend):
    """A PyTorch model, its Horovod DistributedOptimizer, loss and datasets, for the core.

    ``optimizer`` must already be Horovod's DistributedOptimizer (:func:`distributed_optimizer`,
    or :func:`sgd` from the flags); ``train_set`` / ``val_set``: torch datasets, or
    ``ArrayDataset``s (``common.data.datasets``); ``topk`` and ``num_classes`` as for ``Backend``.
    """

    checkpoint_suffix = "pt"
    hvd = hvd
    # The recipe's optimizer averages the gradients (Horovod's DistributedOptimizer); the
    # strategies that move gradients themselves (pipeline, parameter servers) say False.
    averages_gradients = True
    _host_buffers: list = ()  # the tensors of the last host_copy, reused by the next

    def __init__(self, rt: Runtime, cfg: TrainConfig, model: torch.nn.Module,
                 optimizer: torch.optim.Optimizer, loss_fn: Callable, train_set, val_set,
                 topk: tuple[int, ...] = (1,), num_classes: int = 0,
                 val_batch_size: int = 256) -> None:
        if self.averages_gradients and rt.size > 1:
            require_distributed(optimizer, rt.size)
        if cfg.run.sync_bn:
            if not self.averages_gradients:
                raise ConfigError("--sync-bn works with data parallelism, not with this "
                                  "strategy's own gradient exchange")
            torch_sync_bn.convert(model)
        # What runs the forward passes: the model, or its torch.compile'd wrapper (which shares
        # its parameters; the plain module's state goes into checkpoints, without the
        # wrapper's "_orig_mod." prefix).
        self.net = model
        if cfg.run.compile:
            if not self.averages_gradients:
                raise ConfigError("--compile works with data parallelism, not with this "
                                  "strategy's own gradient exchange")
            self.net = torch.compile(model)
        if optimizer is not None:  # (a parameter server's server ranks have none)
            check_optimizer_flags(cfg, type(optimizer).__name__, *optimizer_settings(optimizer))
        if isinstance(train_set, ArrayDataset):
            train_set, val_set = (as_tensors(d) for d in (train_set, val_set))
        super().__init__(rt, cfg, model, optimizer, loss_fn, len(train_set), len(val_set), topk,
                         num_classes, val_batch_size)
        self.precision = Precision(cfg.run.amp, self.device)
        if self.precision.notice:
            self.notices.append(self.precision.notice)
        pin = torch.device(self.device).type == "cuda"
        self.train_loader = sharded_loader(train_set, self.samples_per_step,
                                           cfg.run.data_workers, pin, drop_last=True)
        self.val_loader = sharded_loader(val_set, val_batch_size, cfg.run.data_workers, pin,
                                         drop_last=False)
        self.adasum_local_size = (rt.local_size if pin and hvd.nccl_built() else 1)
        self.times = StepTimes()
        self.grad_norms = GradNorms(self.device)

    def epoch_stats(self) -> dict:
        return self.grad_norms.read()

    # --- the job and its collectives ------------------------------------------------------------
    def allreduce_sum(self, values: np.ndarray) -> np.ndarray:
        return allreduce_sum(values)

    # --- random number generators ---------------------------------------------------------------
    def seed(self, seed: int) -> None:
        seed_everything(seed)

    def rng_state(self) -> dict:
        state = {"torch": torch.get_rng_state(), "python": random.getstate()}
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state()
        return state

    def set_rng_state(self, state: dict) -> None:
        torch.set_rng_state(state["torch"])
        random.setstate(_as_tuple(state["python"]))
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state(state["cuda"])

    # --- model and optimizer state ---------------------------------------------------------------
    def state(self) -> dict:
        scaler = self.precision.scaler
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else None}

    def snapshot(self) -> dict:
        return copy.deepcopy(self.state())

    def host_copy(self, state: dict) -> dict:
        """Every tensor copied to host memory (a GPU's too, through pinned memory), the rest
        deep-copied. The copy lands in the buffers of the copy before when the shapes match:
        allocating a ResNet-50's 190 MB afresh took 0.20 s here (the new pages' faults), copying
        into kept buffers 0.03 s. So the copy before must no longer be read (the manager waits
        for its write first). A tensor that appears twice (tied weights) is copied once."""
        kept, fresh, seen = self._host_buffers, [], {}
        on_gpu = False

        def copied(v):
            nonlocal on_gpu
            if isinstance(v, torch.Tensor):
                key = (v.data_ptr(), v.dtype, tuple(v.shape), tuple(v.stride()), v.device)
                if key in seen:
                    return seen[key]
                buf = kept[len(fresh)] if len(fresh) < len(kept) else None
                if buf is None or buf.shape != v.shape or buf.dtype != v.dtype:
                    buf = torch.empty(v.shape, dtype=v.dtype, pin_memory=v.is_cuda)
                buf.copy_(v.detach(), non_blocking=v.is_cuda)
                on_gpu |= v.is_cuda
                fresh.append(buf)
                seen[key] = buf
                return buf
            if isinstance(v, dict):
                return {k: copied(x) for k, x in v.items()}
            if isinstance(v, list | tuple):
                return type(v)(copied(x) for x in v)
            return copy.deepcopy(v)

        out = copied(state)
        if on_gpu:
            torch.cuda.synchronize()  # the non-blocking copies have landed
        self._host_buffers = fresh
        return out

    def load_state(self, state: dict, source: str) -> None:
        self.model.load_state_dict(state["model"])
        try:
            self.optimizer.load_state_dict(state["optimizer"])
        except (ValueError, KeyError) as e:
            raise CheckpointError(
                f"{source!r}: optimizer state does not fit this optimizer ({e})") from None
        if self.precision.scaler is not None and state.get("scaler"):
            self.precision.scaler.load_state_dict(state["scaler"])

    def signature(self) -> list[list]:
        return [[k, list(v.shape)] for k, v in self.model.state_dict().items()]

    def broadcast_state(self) -> None:
        broadcast_state(self.model, self.optimizer)

    def weights_finite(self) -> bool:
        return sums_finite(self.model.parameters())

    def write_checkpoint(self, f, record: dict) -> None:
        # The file layout of format 1: flat keys, the model's signature as a dict.
        flat = {k: v for k, v in record.items() if k not in ("state", "signature")}
        torch.save(with_checksum({"format": CHECKPOINT_FORMAT, **flat, **record["state"],
                                  "model_signature": dict(record["signature"])}), f)

    def read_checkpoint(self, path: str) -> dict:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
            raise CheckpointError(f"{path!r} is not a horovod-recipes PyTorch checkpoint")
        ckpt = verified(ckpt)
        record = {k: v for k, v in ckpt.items() if k not in ("model", "optimizer", "scaler")}
        record["signature"] = [[k, list(v)] for k, v in ckpt.get("model_signature", {}).items()]
        record["state"] = {k: ckpt.get(k) for k in ("model", "optimizer", "scaler")}
        return record

    # --- training and evaluation ----------------------------------------------------------------
    def train_batches(self, epoch: int, samples_done: int):
        self.train_loader.sampler.set_epoch(epoch, self.train_indices(self.cfg.run.seed, epoch,
                                                                      samples_done))
        return self.train_loader

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def zero_counters(self) -> torch.Tensor:
        return torch.zeros(self.train_layout.size, dtype=torch.float64, device=self.device)

    def read_counters(self, c: torch.Tensor) -> np.ndarray:
        return c.cpu().numpy()

    def train_step(self, batch) -> torch.Tensor:
        """One optimizer step over a batch split into ``batches_per_allreduce`` backward passes.

        Each pass's loss is weighted by its share of the batch so the accumulated gradient is the
        mean over the whole batch; Horovod allreduces once, after the last pass. With an fp16
        grad scaler, gradients are synchronised, unscaled, then stepped (Horovod's order).
        """
        began = time.perf_counter()
        x, y = (t.to(self.device, non_blocking=True) for t in batch)
        model, optimizer, scaler = self.model, self.optimizer, self.precision.scaler
        model.train()
        optimizer.zero_grad()
        total = self.zero_counters()
        for xs, ys in zip(x.chunk(self.passes), y.chunk(self.passes), strict=True):
            with self.precision.autocast():
                out = self.net(xs)
                loss = self.loss_fn(out, ys)
            weighted = loss * (len(ys) / len(y))
            (scaler.scale(weighted) if scaler else weighted).backward()
            total = total + counters(out, ys, loss, self.train_layout)
        waiting = time.perf_counter()  # for the allreduces backward has not hidden
        clip = self.cfg.gradients.clip_grad_norm
        if scaler is not None or clip:
            # Horovod's order: the averaged gradients first, then unscale and clip, then step.
            optimizer.synchronize()
            if scaler is not None:
                scaler.unscale_(optimizer)
            if clip:
                norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
                self.grad_norms.add(norm.detach(), clip)
            with optimizer.skip_synchronize():
                if scaler is not None:
                    scaler.step(optimizer)
                else:
                    optimizer.step()
            if scaler is not None:
                scaler.update()
        else:
            optimizer.step()
        self.times.end_step(began, waiting)
        return total

    def comm_seconds(self) -> float:
        return self.times.comm_s

    def run_stats(self) -> dict:
        """Data parallelism: the time each rank's steps took and waited in ``optimizer.step``
        (on CPU, where the clock sees the work), and the bytes a ring allreduce sends per step
        (2 (N-1)/N of the gradients: an analytic count; Horovod's messages are not visible)."""
        n = self.runtime().size
        grad_bytes = sum(p.numel() * (2 if self.cfg.gradients.fp16_allreduce else p.element_size())
                         for p in self.model.parameters() if p.requires_grad)
        self.times.sent_bytes = self.times.steps * 2 * (n - 1) / n * grad_bytes
        return self.times.record(self.allgather_object, strategy="data parallel",
                                 bytes_counted="ring allreduce, 2(N-1)/N x gradient bytes",
                                 gradient_bytes=grad_bytes)

    @torch.no_grad()
    def evaluate(self) -> MetricSums:
        self.model.eval()
        self.val_loader.sampler.set_epoch(0, self.val_indices())
        total = torch.zeros(self.val_layout.size, dtype=torch.float64, device=self.device)
        for x, y in self.val_loader:
            found = self.val_counters(x, y)
            if found is not None:
                total += found
            beat()
        return MetricSums(self.val_layout, total.cpu().numpy())

    def val_counters(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor | None:
        """One validation batch's metric counters on this rank (None: it holds none)."""
        x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        with self.precision.autocast():
            out = self.net(x)
            loss = self.loss_fn(out, y)
        return counters(out, y, loss, self.val_layout)

    def scalar_writer(self, log_dir: str):
        return tensorboard_writer(log_dir)


def tensorboard_writer(log_dir: str):
    """torch's ``SummaryWriter`` without TensorFlow (rank 0 would import it before its first
    collective, the others waiting: ``common.monitor.output.tensorboard_without_tensorflow``)."""
    tensorboard_without_tensorflow()
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir)
