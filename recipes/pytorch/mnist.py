"""MNIST recipe (PyTorch): a small CNN on handwritten digits, data-parallel with Horovod.

Run alone:           python recipes/pytorch/mnist.py
Run on 2 workers:    horovodrun -np 2 python recipes/pytorch/mnist.py
Real MNIST:          ... --data-dir DIR   (train-/t10k- images/labels IDX files, plain or .gz)

Without --data-dir it trains on scikit-learn's bundled 8x8 digits, so it works offline.
The lines marked `# distributed` are all that differ from a single-process script.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch import nn

from common import torch_backend as tb
from common.config import core_parser, parse_config
from common.data import load_mnist_or_digits, shard_indices, steps_per_epoch
from common.failure import UserError, run_main
from common.metrics import MetricSums
from common.output import Reporter
from common.schedule import LRSchedule

RECIPE = "pytorch/mnist"


class Net(nn.Module):
    """Two conv layers and two dense ones; adaptive pooling makes it fit 8x8 and 28x28 inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(4)
        self.fc1 = nn.Linear(64 * 4 * 4, 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x))
        x = self.pool(F.relu(self.conv2(x)))
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


def main(argv: list[str] | None = None) -> None:
    parser = core_parser(__doc__.splitlines()[0], epochs=12, batch_size=32, base_lr=0.05,
                         warmup_epochs=2, lr_decay="cosine",
                         checkpoint_dir="runs/mnist/checkpoints",
                         metrics_file="runs/mnist/metrics.jsonl")
    cfg, _ = parse_config(parser, argv)
    rt, device = tb.init(cfg)  # distributed: hvd.init, threads, device
    out = Reporter(rt.is_root, cfg.metrics_file, cfg.progress)

    train_set, val_set = load_mnist_or_digits(cfg.data_dir)
    samples_per_step = cfg.batch_size * cfg.batches_per_allreduce
    n_steps = steps_per_epoch(len(train_set), rt.size, samples_per_step)
    if n_steps < 1:
        raise UserError(f"{len(train_set)} training samples are too few for {rt.size} workers "
                        f"x {samples_per_step} samples per step")

    model = Net().to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.base_lr, momentum=cfg.momentum,
                                weight_decay=cfg.weight_decay)
    optimizer = tb.distributed_optimizer(optimizer, model, cfg)  # distributed
    schedule = LRSchedule.from_config(cfg, rt.size, n_steps, tb.adasum_local_size(rt))
    checkpointer = tb.Checkpointer(rt, cfg, RECIPE, model, optimizer, n_steps)
    progress, notices = checkpointer.restore()  # distributed: rank 0 loads, all receive
    for notice in notices:
        out.print(f"note: {notice}")

    out.print(f"{RECIPE}: {len(train_set)} train / {len(val_set)} val samples ({train_set.name}), "
              f"{rt.size} worker(s) x batch {cfg.batch_size} x {cfg.batches_per_allreduce} "
              f"pass(es), {n_steps} steps/epoch, LR {cfg.base_lr:g} -> {schedule.target_lr:g}")
    if progress.step:
        out.print(f"resumed from {progress.checkpoint} (epoch {progress.epoch}, "
                  f"step {progress.step})")

    step, wall_start = progress.step, time.perf_counter()
    train_sums = val_sums = MetricSums()
    samples_per_sec = 0.0
    for epoch in range(progress.epoch, cfg.epochs):
        if cfg.max_steps is not None and step >= cfg.max_steps:
            break
        order = shard_indices(len(train_set), rt.rank, rt.size, cfg.seed, epoch)  # distributed
        local, t0 = MetricSums(), time.perf_counter()
        bar = out.bar(n_steps, f"epoch {epoch + 1}/{cfg.epochs}")
        bar.update(step - epoch * n_steps)
        for x, y in tb.batches(train_set, order, samples_per_step, device,
                               skip=step - epoch * n_steps):
            tb.set_lr(optimizer, schedule(step))
            loss, correct, n = tb.train_step(model, optimizer, F.cross_entropy, x, y,
                                             cfg.batches_per_allreduce)
            local.add(loss, correct, n)
            step += 1
            bar.update()
            bar.set_postfix(loss=f"{loss:.3f}", lr=f"{schedule(step - 1):.3g}")
            if cfg.max_steps is not None and step >= cfg.max_steps:
                break
        bar.close()
        elapsed = time.perf_counter() - t0
        train_sums = local.global_sums(tb.allreduce_sum)  # distributed: exact global averages
        val_sums = tb.evaluate(model, F.cross_entropy,
                               tb.eval_batches(val_set, rt, 256, device)
                               ).global_sums(tb.allreduce_sum)
        samples_per_sec = train_sums.count / max(elapsed, 1e-9)
        epoch_done = epoch + 1 if step == (epoch + 1) * n_steps else epoch
        saved = checkpointer.save(tb.Progress(epoch_done, step))
        out.print(f"epoch {epoch + 1}/{cfg.epochs}: train loss {train_sums.loss:.4f} "
                  f"acc {train_sums.accuracy:.4f} | val loss {val_sums.loss:.4f} "
                  f"acc {val_sums.accuracy:.4f} | {samples_per_sec:,.0f} samples/s")
        out.record("epoch", epoch=epoch + 1, step=step, lr=schedule(max(step - 1, 0)),
                   train_loss=train_sums.loss, train_accuracy=train_sums.accuracy,
                   val_loss=val_sums.loss, val_accuracy=val_sums.accuracy,
                   samples_per_sec=samples_per_sec,
                   samples_per_sec_per_worker=samples_per_sec / rt.size,
                   epoch_time_s=elapsed, checkpoint=saved)
        progress = tb.Progress(epoch_done, step, saved or progress.checkpoint)

    if train_sums.count == 0:  # nothing left to train: report the restored model
        val_sums = tb.evaluate(model, F.cross_entropy,
                               tb.eval_batches(val_set, rt, 256, device)
                               ).global_sums(tb.allreduce_sum)
        out.print(f"already trained to step {step} ({progress.checkpoint}); nothing to do")
    wall = time.perf_counter() - wall_start
    out.record("final", recipe=RECIPE, world_size=rt.size, epochs=cfg.epochs, step=step,
               train_loss=train_sums.loss, train_accuracy=train_sums.accuracy,
               val_loss=val_sums.loss, val_accuracy=val_sums.accuracy,
               samples_per_sec=samples_per_sec,
               samples_per_sec_per_worker=samples_per_sec / rt.size,
               wall_time_s=wall, checkpoint=progress.checkpoint)
    out.print(f"final: val accuracy {val_sums.accuracy:.4f} on {rt.size} worker(s) in "
              f"{wall:.1f}s; checkpoint: {progress.checkpoint}; metrics: {cfg.metrics_file}")


if __name__ == "__main__":
    run_main(main)
