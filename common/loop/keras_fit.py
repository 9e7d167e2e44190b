"""Keras fit owns ``model.fit`` for the core: one callback that drives the same Trainer as every loop.

``model.fit`` keeps its own loop, so :class:`TrainerCallback` maps its events onto
``common.loop.trainer.Trainer``: the LR of every step from the one ``LRSchedule``, and at each epoch
end ``Trainer.end_epoch`` (exact global metrics from each rank's sums, validation through the
backend, the ``SavePolicy``'s checkpoint, rank 0's line, record and scalars), exactly as the
custom loops do. Horovod 0.28.1's own Keras callbacks crash on TF 2.21 and are not used.

Use with tf-keras (``TF_USE_LEGACY_KERAS=1`` before TensorFlow is imported) and Horovod's
Keras ``DistributedOptimizer`` (:func:`distributed_optimizer`). ``model.fit`` resumes at epoch
boundaries: a checkpoint written mid-epoch restarts its epoch.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np

# First: TensorFlow is imported there, quietly (common.world.quiet); horovod.tensorflow.keras would
# import it with its start-up lines.
from common.frameworks import tf_backend
from common.frameworks.tf_backend import (
    GradNorms,
    TFBackend,
    clipped,
    compression,
    refuse_two_clips,
    refuse_two_weight_decays,
    shard_dataset,
    tf,
    with_weight_decay,
)

import horovod.tensorflow.keras as hvd_keras  # isort: skip

from common.base.errors import UserError
from common.config.core import TrainConfig
from common.config.strategies import ElasticConfig
from common.faults.watchdog import beat
from common.loop import trainer
from common.loop.trainer import Trainer
from common.monitor.metrics import MetricSums, Throughput

keras = tf.keras


def distributed_optimizer(optimizer, cfg: TrainConfig):
    """Wrap a tf-keras optimizer in Horovod's Keras DistributedOptimizer with the core's
    gradient options; accumulated passes are averaged, as in the other recipes, and
    ``--weight-decay`` is added to the averaged gradient (``tf_backend.with_weight_decay``)."""
    g = cfg.gradients
    if cfg.optimizer.weight_decay or g.clip_grad_norm:
        optimizer = _with_core_gradients(optimizer, cfg.optimizer.weight_decay, g.clip_grad_norm)
    return hvd_keras.DistributedOptimizer(
        optimizer, compression=compression(cfg), backward_passes_per_step=g.batches_per_allreduce,
        average_aggregated_gradients=True,
        op=hvd_keras.Adasum if g.use_adasum else hvd_keras.Average,
        gradient_predivide_factor=g.gradient_predivide_factor)


def sgd(cfg: TrainConfig):
    """The flags' SGD (``--base-lr``, ``--momentum``, ``--weight-decay``), already Horovod's
    Keras DistributedOptimizer: what ``model.compile(optimizer=...)`` takes."""
    return distributed_optimizer(tf_backend.sgd(cfg), cfg)


def compiled_backend(rt, cfg: TrainConfig, model, train, val, **kwargs) -> TFBackend:
    """The TFBackend of a compiled model: its optimizer and loss are the ones given to
    ``model.compile`` (each given once); ``kwargs`` as for TFBackend (``num_classes``, ...)."""
    if getattr(model, "optimizer", None) is None or getattr(model, "loss", None) is None:
        raise UserError("compile the model with an optimizer and a loss first: "
                        "model.compile(optimizer=sgd(cfg), loss=..., metrics=['accuracy'])")
    loss = model.loss if callable(model.loss) else tf.keras.losses.get(model.loss)
    return TFBackend(rt, cfg, model, model.optimizer, loss, train, val, **kwargs)


def _with_core_gradients(optimizer, weight_decay: float, clip: float | None):
    """The optimizer, as a subclass that clips the gradients it applies to ``--clip-grad-norm``
    and adds the L2 term to them. Horovod's optimizer subclasses it in turn, and calls it once
    per step (every ``--batches-per-allreduce`` batches) with the averaged gradients; its
    ``grad_norms`` note each step's norm before clipping."""
    refuse_two_weight_decays(optimizer, weight_decay)
    refuse_two_clips(optimizer, clip)
    base = type(optimizer)
    norms = GradNorms()

    def apply_gradients(self, grads_and_vars, *args, **kwargs):
        grads, variables = zip(*grads_and_vars, strict=True)
        if clip:
            grads = clipped(grads, clip, norms)
        grads = with_weight_decay(grads, variables, weight_decay)
        return base.apply_gradients(self, list(zip(grads, variables, strict=True)), *args, **kwargs)

    cls = type(base.__name__, (base,), {"apply_gradients": apply_gradients, "grad_norms": norms})
    return cls.from_config(optimizer.get_config())


def accuracy_key(logs) -> str | None:
    """The key of the compiled accuracy metric in Keras's logs, whatever it was called
    (``"accuracy"``, ``"acc"``, ``SparseCategoricalAccuracy()``'s ``sparse_categorical_accuracy``,
    a name of the user's own ending in ``acc``/``accuracy``); None if none was compiled."""
    names = [k for k in logs if k != "loss" and not k.startswith("val_")]
    for name in names:
        if name.endswith(("accuracy", "acc")) and "top" not in name:
            return name
    return None


class _NotOurCallbackTiming(logging.Filter):
    """Drops tf-keras's "Callback method ... is slow compared to the batch time" warning: the
    core's one callback agrees stop signals with a collective after each step, which is slow
    next to a small batch by design (the time is measured in the epoch's samples/s)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "is slow compared to the batch time" not in record.getMessage()


class TrainerCallback(keras.callbacks.Callback):
    """``model.fit``'s batches and epochs, driving a Trainer (one Keras batch is one pass).

    ``on_step(epoch_end)`` runs after every optimizer step and epoch (elastic commits).
    """

    def __init__(self, trainer: Trainer, on_step: Callable[[bool], None] | None = None) -> None:
        super().__init__()
        self.trainer, self.on_step = trainer, on_step
        self.passes = trainer.cfg.gradients.batches_per_allreduce
        self.batches = 0
        # Keras hands the batch logs over as tensors instead of reading them back every batch;
        # they are read only when needed (the first batch, a stop, the epoch's end).
        self._supports_tf_logs = True

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch_clock, self.batches = Throughput(), 0
        self.trainer.trained = True

    def on_train_batch_begin(self, batch, logs=None):
        t = self.trainer
        t.backend.set_lr(t.lr(t.state.step))

    def on_train_batch_end(self, batch, logs=None):
        self.batches += 1
        t = self.trainer
        if t.state.loss_reference is None and logs and "loss" in logs:  # once per run, every rank
            total = t.backend.allreduce_sum(np.array([float(logs["loss"])]))[0]
            t.state.loss_reference = float(total / t.rt.size)
        if self.batches % self.passes:
            return
        t.state.step += 1
        beat(t.state.step)
        t.show_progress(self.batches // self.passes, lambda: float((logs or {}).get("loss", float("nan"))),
                        self.batches * t.cfg.run.batch_size * t.rt.size
                        / max(self.epoch_clock.elapsed, 1e-9))
        t.stop_if_signalled(lambda: self.epoch_sums(logs))
        max_steps = t.cfg.run.max_steps
        if max_steps is not None and t.state.step >= max_steps:
            self.model.stop_training = True
        elif self.on_step:
            self.on_step(False)

    def epoch_sums(self, logs) -> MetricSums:
        """This rank's sums of the epoch so far: Keras logs are its means over its samples."""
        logs, seen = logs or {}, self.batches * self.trainer.cfg.run.batch_size
        key = accuracy_key(logs)
        return MetricSums(self.trainer.backend.train_layout,
                          [float(logs.get("loss", float("nan"))) * seen, seen,
                           float(logs[key]) * seen if key else float("nan")])

    def on_epoch_end(self, epoch, logs=None):
        t = self.trainer
        seen = self.batches * t.cfg.run.batch_size
        local = self.epoch_sums(logs)  # reduced exactly by end_epoch
        complete = self.batches == t.n_steps * self.passes
        t.end_epoch(local, self.epoch_clock.elapsed, seen, complete,
                    stopping=bool(self.model.stop_training))
        if self.on_step:
            self.on_step(True)


def _fit_epochs(t: Trainer, on_step: Callable[[bool], None] | None) -> None:
    """``model.fit`` from the trainer's epoch to the last, on the current world. It starts at
    epoch boundaries: after a mid-epoch checkpoint (resumed, rolled back to, or an elastic
    commit) the epoch restarts."""
    b = t.backend
    if t.state.samples_done:
        t.out.print(f"note: model.fit resumes at epoch boundaries: epoch {t.state.epoch + 1} "
                    "restarts")
        t.state.step, t.state.samples_done = t.state.epoch * t.n_steps, 0
        t.epoch_sums = None
    if t.done:
        return
    batch = t.cfg.run.batch_size
    ds = None
    for epoch in range(t.state.epoch, t.cfg.run.epochs):
        part = shard_dataset(b.inputs, b.train.labels, b.train_indices(t.cfg.run.seed, epoch, 0),
                             batch)
        ds = part if ds is None else ds.concatenate(part)
    quiet = _NotOurCallbackTiming()
    logging.getLogger("tensorflow").addFilter(quiet)
    try:
        b.model.fit(ds, epochs=t.cfg.run.epochs, initial_epoch=t.state.epoch,
                    steps_per_epoch=t.n_steps * t.cfg.gradients.batches_per_allreduce,
                    callbacks=[TrainerCallback(t, on_step)], verbose=0)
    finally:
        logging.getLogger("tensorflow").removeFilter(quiet)


def fit(backend: TFBackend, cfg: TrainConfig, recipe: str,
        recipe_args: dict[str, Any] | None = None, describe: str = "",
        elastic: ElasticConfig | None = None) -> dict[str, Any]:
    """``common.loop.trainer.fit`` for a compiled tf-keras model: train with ``model.fit``."""
    workers = backend.runtime().size
    compiled = getattr(backend.model, "optimizer", None)
    inner = getattr(compiled, "inner_optimizer", compiled)  # a LossScaleOptimizer wraps it
    if workers > 1 and not callable(getattr(inner, "_allreduce", None)):
        raise UserError(f"the model is compiled with an optimizer ({type(inner).__name__}) that "
                        f"is not Horovod's, so each of the {workers} workers would train a model "
                        "of its own; compile it with distributed_optimizer(optimizer, cfg) "
                        "(common.loop.keras_fit)")
    return trainer.fit(backend, cfg, recipe, recipe_args, describe, elastic, run_epochs=_fit_epochs)
