"""Torch backend owns the PyTorch side of the core: Horovod setup, gradient averaging, state broadcast,
checkpoint (de)serialisation, train/eval steps and sharded batches.

Everything framework-agnostic (config, LR schedule, metric sums, checkpoint files, output) lives
in the sibling modules; this module only adapts them to ``torch`` and ``horovod.torch``.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

import horovod.torch as hvd
import numpy as np
import torch

from common.checkpoint import CheckpointError, CheckpointStore
from common.config import TrainConfig
from common.data import shard_indices
from common.failure import agree
from common.metrics import MetricSums
from common.runtime import Runtime, init_horovod, threads_per_worker

CHECKPOINT_FORMAT = "horovod-recipes/torch/1"


def init(cfg: TrainConfig, comm=None) -> tuple[Runtime, torch.device]:
    """Initialise Horovod, pin threads and device for this rank, seed every RNG from ``cfg.seed``."""
    rt = init_horovod(hvd, comm, cfg.mpi_groups)
    torch.set_num_threads(threads_per_worker(rt.local_size, cfg.threads_per_worker))
    if torch.cuda.is_available():
        # One GPU per rank: GPU local_rank, or the task's own GPU when the scheduler shows each
        # task only its own (SLURM's --gpus-per-task, CUDA_VISIBLE_DEVICES per rank).
        index = rt.local_rank % torch.cuda.device_count()
        torch.cuda.set_device(index)
        device = torch.device("cuda", index)
    else:
        device = torch.device("cpu")
    seed_everything(cfg.seed)
    return rt, device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def distributed_optimizer(optimizer: torch.optim.Optimizer, model: torch.nn.Module,
                          cfg: TrainConfig) -> torch.optim.Optimizer:
    """Wrap ``optimizer`` in Horovod's DistributedOptimizer with the core's gradient options."""
    return hvd.DistributedOptimizer(
        optimizer,
        named_parameters=model.named_parameters(),
        compression=hvd.Compression.fp16 if cfg.fp16_allreduce else hvd.Compression.none,
        backward_passes_per_step=cfg.batches_per_allreduce,
        op=hvd.Adasum if cfg.use_adasum else hvd.Average,
        gradient_predivide_factor=cfg.gradient_predivide_factor,
    )


def adasum_local_size(rt: Runtime) -> int:
    """Local size that Adasum's LR rule uses: GPUs with NCCL sum within a node first."""
    return rt.local_size if torch.cuda.is_available() and hvd.nccl_built() else 1


def allreduce_sum(values: np.ndarray) -> np.ndarray:
    """Sum a float64 vector over all ranks (a collective)."""
    t = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float64))
    return hvd.allreduce(t, op=hvd.Sum, name="metric_sums").numpy()


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def broadcast_training_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Make every rank hold rank 0's parameters and optimizer state (a collective)."""
    # Horovod initialises an empty optimizer state with a zero-gradient step before it can
    # broadcast it, and that step moves parameters under weight decay. Fresh optimizers are
    # identical on every rank, so broadcast optimizer state only when rank 0 has some.
    root_has_state = hvd.broadcast_object(
        len(optimizer.state_dict()["state"]) > 0, root_rank=0, name="has_opt_state")
    if root_has_state:
        hvd.broadcast_optimizer_state(optimizer, root_rank=0)
    hvd.broadcast_parameters(model.state_dict(), root_rank=0)


def model_signature(model: torch.nn.Module) -> dict[str, list[int]]:
    """Names and shapes of a model's state: what a checkpoint must match."""
    return {k: list(v.shape) for k, v in model.state_dict().items()}


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_as_tuple(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _as_tuple(x):
    return tuple(_as_tuple(v) for v in x) if isinstance(x, list | tuple) else x


@dataclass(frozen=True)
class Progress:
    """How far training has got: full epochs done and optimizer steps done in all.

    ``step`` counts steps of the current run's size; ``step - epoch * steps_per_epoch`` steps of
    the next epoch are already done when a run stopped inside an epoch.
    """

    epoch: int = 0
    step: int = 0
    checkpoint: str | None = None


class Checkpointer:
    """Rank-0 checkpoints of a model and optimizer, restored on every rank by broadcast.

    Every rank calls :meth:`restore` once before training and :meth:`save` at the same points;
    both are collectives. Files are read with ``torch.load(weights_only=True)``.
    """

    def __init__(self, rt: Runtime, cfg: TrainConfig, recipe: str,
                 model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 steps_per_epoch: int = 1, scaler=None) -> None:
        self.rt = rt
        self.steps_per_epoch = steps_per_epoch
        self.scaler = scaler
        self.epoch_sums: list | None = None  # this rank's partial-epoch sums after restore
        self.recipe = recipe
        self.model = model
        self.optimizer = optimizer
        self.config = cfg.as_dict()
        self.seed = cfg.seed
        self.store = (CheckpointStore(cfg.checkpoint_dir, cfg.keep_checkpoints)
                      if cfg.checkpoint_dir else None)

    def _load(self, path: str) -> dict:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
            raise CheckpointError(f"{path!r} is not a horovod-recipes PyTorch checkpoint")
        if ckpt.get("recipe") != self.recipe:
            raise CheckpointError(
                f"{path!r} was saved by recipe {ckpt.get('recipe')!r}, not {self.recipe!r}; "
                "use another --checkpoint-dir"
            )
        theirs, ours = ckpt.get("model_signature"), model_signature(self.model)
        if theirs != ours:
            diff = sorted(set(map(str, theirs.items())) ^ set(map(str, ours.items())))[:2]
            raise CheckpointError(
                f"{path!r} holds a different model (first differences: {'; '.join(diff)}); "
                "use another --checkpoint-dir"
            )
        return ckpt

    def restore(self) -> tuple[Progress, list[str]]:
        """Resume from the newest valid checkpoint (rank 0 reads, all ranks receive).

        Returns the progress to continue from and notices for the user (rank 0's view).
        """
        found, error, notices = None, "", []
        if self.rt.is_root and self.store is not None:
            try:
                found = self.store.newest_valid(self._load)
                if found:
                    ref, ckpt, skipped = found
                    self.model.load_state_dict(ckpt["model"])
                    try:
                        self.optimizer.load_state_dict(ckpt["optimizer"])
                    except (ValueError, KeyError) as e:
                        raise CheckpointError(
                            f"{ref.path!r}: optimizer state does not fit this optimizer ({e})"
                        ) from None
                    if self.scaler is not None and ckpt.get("scaler"):
                        self.scaler.load_state_dict(ckpt["scaler"])
                    if skipped:
                        notices.append(f"skipped unreadable checkpoints: {', '.join(skipped)}")
            except CheckpointError as e:
                error = str(e)
        agree(not error, error, hvd.broadcast_object)
        meta = None
        if found:
            ref, ckpt, _ = found
            meta = {"epoch": ckpt["epoch"], "step": ckpt["step"], "path": ref.path,
                    "rng": ckpt["rng"], "world_size": ckpt["world_size"],
                    "steps_per_epoch": ckpt["steps_per_epoch"],
                    "epoch_sums": ckpt.get("epoch_sums")}
        meta = hvd.broadcast_object(meta, root_rank=0, name="ckpt_meta")
        broadcast_training_state(self.model, self.optimizer)
        if meta is None:
            return Progress(), notices
        step = meta["step"]
        if meta["world_size"] == self.rt.size and meta["steps_per_epoch"] == self.steps_per_epoch:
            _set_rng_state(meta["rng"][self.rt.rank])
            if meta["epoch_sums"] is not None:
                self.epoch_sums = meta["epoch_sums"][self.rt.rank]
        else:
            # Steps mean other sample counts now: continue from the last full epoch.
            step = meta["epoch"] * self.steps_per_epoch
            notices.append(f"checkpoint was written by {meta['world_size']} worker(s) at "
                           f"{meta['steps_per_epoch']} steps/epoch, this run has {self.rt.size} at "
                           f"{self.steps_per_epoch}: continuing from the start of epoch "
                           f"{meta['epoch'] + 1} with fresh data order and RNG streams")
            seed_everything(self.seed + 1_000_003 * meta["epoch"] + self.rt.rank)
        return Progress(meta["epoch"], step, meta["path"]), notices

    def save(self, progress: Progress, epoch_sums: MetricSums | None = None) -> str | None:
        """Write a checkpoint of ``progress`` from rank 0 (a collective); returns its path.

        ``epoch_sums`` are this rank's metric sums of the epoch in progress, so that a run
        resumed mid-epoch reports the same epoch metrics as an uninterrupted one.
        """
        if self.store is None:
            return None
        rngs = hvd.allgather_object(_rng_state(), name="rng_states")
        sums = None if epoch_sums is None else epoch_sums.to_array().tolist()
        all_sums = hvd.allgather_object(sums, name="epoch_sums")
        path, error = None, ""
        if self.rt.is_root:
            ckpt = {
                "format": CHECKPOINT_FORMAT,
                "recipe": self.recipe,
                "model_signature": model_signature(self.model),
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "epoch": progress.epoch,
                "step": progress.step,
                "rng": rngs,
                "world_size": self.rt.size,
                "steps_per_epoch": self.steps_per_epoch,
                "epoch_sums": None if sums is None else all_sums,
                "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                "config": self.config,
            }
            try:
                path = self.store.save(progress.epoch, progress.step,
                                       lambda f: torch.save(ckpt, f))
            except CheckpointError as e:
                error = str(e)
        agree(not error, error, hvd.broadcast_object)
        return hvd.broadcast_object(path, root_rank=0, name="ckpt_path")


class ShardSampler(torch.utils.data.Sampler):
    """This rank's shard of a dataset for a DataLoader (see ``common.data.shard_indices``).

    ``set_epoch(epoch, skip)`` selects the epoch's permutation and passes over its first ``skip``
    samples (resuming mid-epoch). With ``with_epoch`` it yields ``(epoch, index)`` keys for
    datasets whose augmentation is seeded per epoch and sample (:class:`SeededTransform`).
    """

    def __init__(self, n: int, rt: Runtime, seed: int, shuffle: bool = True,
                 drop_tail: bool = True, with_epoch: bool = False) -> None:
        self.n, self.rt, self.seed = n, rt, seed
        self.shuffle, self.drop_tail, self.with_epoch = shuffle, drop_tail, with_epoch
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip

    def indices(self) -> np.ndarray:
        return shard_indices(self.n, self.rt.rank, self.rt.size, self.seed, self.epoch,
                             self.shuffle, self.drop_tail)[self.skip:]

    def __iter__(self):
        for i in self.indices().tolist():
            yield (self.epoch, i) if self.with_epoch else i

    def __len__(self) -> int:
        return len(self.indices())


class SeededTransform(torch.utils.data.Dataset):
    """A dataset whose random augmentation depends only on (seed, epoch, sample index).

    Wrapping ``dataset[i] -> (x, y)`` and ``transform(x)``: the transform runs under torch's RNG
    seeded from the key, and the caller's RNG state is left as it was. Augmentation is then the
    same whichever rank, worker process or resumed run draws the sample.
    """

    def __init__(self, dataset, transform: Callable, seed: int) -> None:
        self.dataset, self.transform, self.seed = dataset, transform, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        epoch, i = key if isinstance(key, tuple) else (0, key)
        x, y = self.dataset[i]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(hash((self.seed, epoch, i)) % 2**63)
            return self.transform(x), y


class Precision:
    """Mixed precision for train steps: bf16 autocast on CUDA, or fp16 with a grad scaler.

    On CPU ``--amp`` is ignored (``enabled`` False) and :attr:`notice` says so.
    """

    def __init__(self, amp: bool, device: torch.device) -> None:
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


def topk_correct(out: torch.Tensor, y: torch.Tensor, topk: tuple[int, ...]) -> list[float]:
    """How many rows of ``out`` have ``y`` among their k highest scores, for each k."""
    k_max = min(max(topk), out.shape[1])
    hits = out.topk(k_max, dim=1).indices == y[:, None]
    return [float(hits[:, :k].any(dim=1).sum()) for k in topk]


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, loss_fn: Callable,
               x: torch.Tensor, y: torch.Tensor, passes: int,
               precision: Precision | None = None,
               topk: tuple[int, ...] = (1,)) -> tuple[float, list[float], int]:
    """One optimizer step over a batch split into ``passes`` backward passes.

    The per-pass loss is weighted by its share of the batch so the accumulated gradient is the
    mean over the whole batch; Horovod allreduces once, after the last pass. With an fp16 grad
    scaler, gradients are synchronised, unscaled, then stepped (Horovod's documented order).
    Returns (mean loss, correct per top-k, samples).
    """
    precision = precision or Precision(False, x.device)
    scaler = precision.scaler
    model.train()
    optimizer.zero_grad()
    loss_total, correct = 0.0, [0.0] * len(topk)
    for xs, ys in zip(x.chunk(passes), y.chunk(passes), strict=True):
        with precision.autocast():
            out = model(xs)
            loss = loss_fn(out, ys)
        weighted = loss * (len(ys) / len(y))
        (scaler.scale(weighted) if scaler else weighted).backward()
        loss_total += loss.item() * len(ys)
        correct = [a + b for a, b in zip(correct, topk_correct(out.detach(), ys, topk),
                                          strict=True)]
    if scaler is not None:
        optimizer.synchronize()
        scaler.unscale_(optimizer)
        with optimizer.skip_synchronize():
            scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    return loss_total / len(y), correct, len(y)


@torch.no_grad()
def evaluate(model: torch.nn.Module, loss_fn: Callable, loader, device: torch.device,
             topk: tuple[int, ...] = (1,), precision: Precision | None = None) -> MetricSums:
    """This rank's loss and top-k sums over ``loader`` (reduce with ``global_sums``)."""
    precision = precision or Precision(False, device)
    model.eval()
    sums = MetricSums(topk)
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with precision.autocast():
            out = model(x)
            loss = loss_fn(out, y)
        sums.add(loss.item(), topk_correct(out.float(), y, topk), len(y))
    return sums
