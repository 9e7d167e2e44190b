"""Keras callbacks owns the core for ``model.fit``: LR schedule, exact metric averaging, checkpoints, output.

Horovod 0.28.1's own ``LearningRateWarmupCallback``, ``LearningRateScheduleCallback`` and
``MetricAverageCallback`` crash on TF 2.21 with tf-keras (they call ``keras.backend.get_value``
/ ``constant``, which Keras 3 removed). These replacements drive the same ``LRSchedule`` as every
other recipe, and talk to the optimizer and Horovod directly. Use them with tf-keras
(``TF_USE_LEGACY_KERAS=1`` before TensorFlow is imported) and Horovod's Keras
``DistributedOptimizer``. Put :class:`MetricAverage` first: the callbacks after it see global
values.
"""

from __future__ import annotations

import numpy as np

from common import tf_backend as tfb
from common.metrics import MetricSums, Throughput
from common.output import Reporter
from common.schedule import LRSchedule

keras = tfb.tf.keras


class LRScheduleCallback(keras.callbacks.Callback):
    """Set the optimizer's LR from ``schedule`` before every batch (warmup is per step)."""

    def __init__(self, schedule: LRSchedule, initial_step: int = 0,
                 batches_per_step: int = 1) -> None:
        super().__init__()
        self.schedule = schedule
        self.batches_per_step = batches_per_step  # Keras batches per optimizer step
        self.batch = initial_step * batches_per_step
        self.last_lr = schedule(initial_step)

    def on_train_batch_begin(self, batch, logs=None):
        self.last_lr = self.schedule(self.batch // self.batches_per_step)
        self.model.optimizer.learning_rate.assign(self.last_lr)

    def on_train_batch_end(self, batch, logs=None):
        self.batch += 1


class MetricAverage(keras.callbacks.Callback):
    """Replace each epoch's per-rank logs by exact global values (a collective per epoch).

    A Keras log is this rank's mean over its samples. ``train_samples`` and ``val_samples`` are
    this rank's sample counts per epoch; each mean is weighted by them and summed over ranks,
    so uneven validation shards still give the true global mean.
    """

    def __init__(self, train_samples: int, val_samples: int) -> None:
        super().__init__()
        self.counts = {"train": float(train_samples), "val": float(val_samples)}

    def on_epoch_end(self, epoch, logs=None):
        if not logs:
            return
        keys = sorted(k for k in logs if np.isscalar(logs[k]) or np.ndim(logs[k]) == 0)
        weights = [self.counts["val" if k.startswith("val_") else "train"] for k in keys]
        sums = np.array([float(logs[k]) * w for k, w in zip(keys, weights, strict=True)]
                        + [self.counts["train"], self.counts["val"]])
        total = tfb.allreduce_sum(sums)
        n_train, n_val = total[-2], total[-1]
        for i, k in enumerate(keys):
            logs[k] = total[i] / (n_val if k.startswith("val_") else n_train)


class CheckpointCallback(keras.callbacks.Callback):
    """Rank-0 checkpoint at each epoch end (every ``every`` epochs and the last); a collective."""

    def __init__(self, checkpointer: tfb.Checkpointer, steps_per_epoch: int, epochs: int,
                 every: int = 1) -> None:
        super().__init__()
        self.checkpointer, self.steps_per_epoch = checkpointer, steps_per_epoch
        self.epochs, self.every = epochs, every
        self.last_path = None
        self.saved_this_epoch = None

    def on_epoch_end(self, epoch, logs=None):
        done = epoch + 1
        self.saved_this_epoch = None
        if done == self.epochs or (self.every and done % self.every == 0):
            self.saved_this_epoch = self.checkpointer.save(done, done * self.steps_per_epoch)
            self.last_path = self.saved_this_epoch or self.last_path


class ReportCallback(keras.callbacks.Callback):
    """Rank 0's epoch line, JSON record and TensorBoard scalars, from the averaged logs."""

    def __init__(self, out: Reporter, epochs: int, steps_per_epoch: int, world_size: int,
                 samples_per_epoch: int, lr: LRScheduleCallback,
                 checkpoint: CheckpointCallback) -> None:
        super().__init__()
        self.out, self.epochs, self.steps_per_epoch = out, epochs, steps_per_epoch
        self.world_size, self.samples = world_size, samples_per_epoch
        self.lr, self.checkpoint = lr, checkpoint
        self.train = self.val = MetricSums()
        self.samples_per_sec = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self.clock = Throughput()

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        self.train = _sums(logs.get("loss"), logs.get("accuracy"))
        self.val = _sums(logs.get("val_loss"), logs.get("val_accuracy"))
        self.samples_per_sec = self.clock.rate(self.samples)
        self.out.epoch(epoch=epoch + 1, epochs=self.epochs,
                       step=(epoch + 1) * self.steps_per_epoch, lr=self.lr.last_lr,
                       train=self.train, val=self.val, samples_per_sec=self.samples_per_sec,
                       world_size=self.world_size, elapsed=self.clock.elapsed,
                       checkpoint=self.checkpoint.saved_this_epoch)


def _sums(loss, accuracy) -> MetricSums:
    """MetricSums holding a global mean loss and accuracy (count 1)."""
    if loss is None:
        return MetricSums()
    return MetricSums(loss_sum=float(loss), count=1.0,
                      correct=[float(accuracy) if accuracy is not None else float("nan")])
