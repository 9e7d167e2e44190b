"""Torch training owns the PyTorch recipes' run: resume, per-step LR, epochs, checkpoints and output.

A recipe builds its datasets, model and (Horovod-wrapped) optimizer and hands them to
:func:`fit`; everything a distributed run adds around the single-process loop happens here once:

* rank 0 restores the newest checkpoint and every rank receives it (model, optimizer, step,
  RNG streams, the partial epoch's metric sums);
* each step sets the LR from the one ``LRSchedule`` and runs ``train_step`` (gradient
  accumulation, mixed precision, Horovod's allreduce);
* each epoch reduces exact global metrics, validates on every rank's shard, checkpoints (every
  ``--checkpoint-epochs`` epochs and every ``--checkpoint-steps`` steps), prints one line and
  writes one JSON record and TensorBoard scalars from rank 0.

Uneven data: training shards drop the permutation's tail so every rank takes the same number of
steps (no ``hvd.join`` needed); validation keeps every sample and reduces sums once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from common import torch_backend as tb
from common.config import TrainConfig
from common.failure import UserError
from common.metrics import MetricSums, Throughput
from common.output import Reporter
from common.runtime import Runtime
from common.schedule import LRSchedule


def make_loaders(train_set, val_set, rt: Runtime, cfg: TrainConfig, device: torch.device,
                 val_batch_size: int = 256):
    """DataLoaders over this rank's shards (train: full steps of batch x passes samples)."""
    seeded = isinstance(train_set, tb.SeededTransform)
    sampler = tb.ShardSampler(len(train_set), rt, cfg.seed, with_epoch=seeded)
    common = {"num_workers": cfg.data_workers, "pin_memory": device.type == "cuda",
              "persistent_workers": False}
    train = torch.utils.data.DataLoader(
        train_set, batch_size=cfg.batch_size * cfg.batches_per_allreduce, sampler=sampler,
        drop_last=True, **common)
    val_sampler = tb.ShardSampler(len(val_set), rt, 0, shuffle=False, drop_tail=False,
                                  with_epoch=isinstance(val_set, tb.SeededTransform))
    val = torch.utils.data.DataLoader(val_set, batch_size=val_batch_size, sampler=val_sampler,
                                      **common)
    return train, val


def fit(rt: Runtime, cfg: TrainConfig, recipe: str, model: torch.nn.Module,
        optimizer: torch.optim.Optimizer, loss_fn: Callable, train_set, val_set,
        device: torch.device, recipe_args: dict[str, Any] | None = None,
        topk: tuple[int, ...] = (1,), describe: str = "") -> dict[str, Any]:
    """Train ``model`` for ``cfg.epochs`` (resuming if a checkpoint exists); return the final record.

    ``optimizer`` must already be Horovod's DistributedOptimizer (``tb.distributed_optimizer``).
    Every rank must call this.
    """
    out = Reporter(rt.is_root, cfg.metrics_file, cfg.progress, cfg.log_dir)
    train_loader, val_loader = make_loaders(train_set, val_set, rt, cfg, device)
    samples_per_step = cfg.batch_size * cfg.batches_per_allreduce
    n_steps = len(train_loader.sampler) // samples_per_step
    if n_steps < 1:
        raise UserError(f"{len(train_set)} training samples are too few for {rt.size} worker(s) "
                        f"x {samples_per_step} samples per step")
    schedule = LRSchedule.from_config(cfg, rt.size, n_steps, tb.adasum_local_size(rt))
    precision = tb.Precision(cfg.amp, device)
    checkpointer = tb.Checkpointer(rt, cfg, recipe, model, optimizer, n_steps, precision.scaler)
    progress, notices = checkpointer.restore()
    if precision.notice:
        notices.append(precision.notice)
    out.start(recipe=recipe, cfg=cfg, recipe_args=recipe_args, world_size=rt.size,
              notices=notices, n_train=len(train_set), n_val=len(val_set), describe=describe,
              n_steps=n_steps, target_lr=schedule.target_lr, epoch=progress.epoch,
              step=progress.step, checkpoint=progress.checkpoint)

    step, run_clock = progress.step, Throughput()
    train_sums = val_sums = MetricSums(topk)
    samples_per_sec = 0.0
    stopped = False
    for epoch in range(progress.epoch, cfg.epochs):
        done_in_epoch = step - epoch * n_steps
        local = MetricSums(topk)
        if done_in_epoch and checkpointer.epoch_sums is not None:
            local = MetricSums.from_array(checkpointer.epoch_sums, topk)
        train_loader.sampler.set_epoch(epoch, done_in_epoch * samples_per_step)
        clock, seen = Throughput(), 0
        bar = out.bar(n_steps, f"epoch {epoch + 1}/{cfg.epochs}")
        bar.update(done_in_epoch)
        for x, y in train_loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            lr = schedule(step)
            tb.set_lr(optimizer, lr)
            loss, correct, n = tb.train_step(model, optimizer, loss_fn, x, y,
                                             cfg.batches_per_allreduce, precision, topk)
            local.add(loss, correct, n)
            step, seen = step + 1, seen + n
            bar.update()
            bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.3g}",
                            samples_s=f"{clock.rate(seen * rt.size):,.0f}")
            stopped = cfg.max_steps is not None and step >= cfg.max_steps
            epoch_end = step == (epoch + 1) * n_steps
            if (cfg.checkpoint_steps and step % cfg.checkpoint_steps == 0 and not epoch_end
                    and not stopped):
                checkpointer.save(tb.Progress(epoch, step), local)
            if stopped:
                break
        bar.close()
        elapsed = clock.elapsed
        seen_all = tb.allreduce_sum(np.array([float(seen)]))[0]
        samples_per_sec = seen_all / max(elapsed, 1e-9)
        train_sums = local.global_sums(tb.allreduce_sum)
        val_sums = tb.evaluate(model, loss_fn, val_loader, device, topk,
                               precision).global_sums(tb.allreduce_sum)
        epoch_done = epoch + 1 if step == (epoch + 1) * n_steps else epoch
        saved = None
        if epoch_done == epoch + 1:
            last = epoch_done == cfg.epochs
            if last or (cfg.checkpoint_epochs and epoch_done % cfg.checkpoint_epochs == 0):
                saved = checkpointer.save(tb.Progress(epoch_done, step))
        else:  # stopped inside the epoch (--max-steps): keep the partial epoch's sums
            saved = checkpointer.save(tb.Progress(epoch_done, step), local)
        progress = tb.Progress(epoch_done, step, saved or progress.checkpoint)
        out.epoch(epoch=epoch + 1, epochs=cfg.epochs, step=step, lr=schedule(max(step - 1, 0)),
                  train=train_sums, val=val_sums, samples_per_sec=samples_per_sec,
                  world_size=rt.size, elapsed=elapsed, checkpoint=saved,
                  **{f"val_top{k}": val_sums.top(k) for k in topk if k != 1})
        if stopped:
            break

    if progress.epoch >= cfg.epochs and train_sums.count == 0:
        val_sums = tb.evaluate(model, loss_fn, val_loader, device, topk,
                               precision).global_sums(tb.allreduce_sum)
        out.print(f"already trained to step {step} ({progress.checkpoint}); nothing to do")
    return out.final(recipe=recipe, epochs=cfg.epochs, step=step, train=train_sums,
                     val=val_sums, samples_per_sec=samples_per_sec, world_size=rt.size,
                     wall=run_clock.elapsed, checkpoint=progress.checkpoint,
                     **{f"val_top{k}": val_sums.top(k) for k in topk if k != 1})
