"""Keras fit owns ``model.fit`` for the core: one callback that drives the same Trainer as every loop.

``model.fit`` keeps its own loop, so :class:`TrainerCallback` maps its events onto
``common.loop.trainer.Trainer``: the LR of every step from the one ``LRSchedule``, and at each epoch
end ``Trainer.end_epoch`` (exact global metrics from each rank's sums, validation through the
backend, the ``SavePolicy``'s checkpoint, rank 0's line, record and scalars), exactly as the
custom loops do. Horovod 0.28.1's own Keras callbacks crash on TF 2.21 and are not used.

Works with Keras 3 (the default) and with tf-keras (``TF_USE_LEGACY_KERAS=1`` before TensorFlow
is imported): the optimizer given to ``model.compile`` averages the gradients through
``common.frameworks.keras_optimizer.distributed_optimizer`` (:func:`sgd` builds the flags' one).
``model.fit`` resumes at epoch boundaries: a checkpoint written mid-epoch restarts its epoch.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np

from common.base.errors import UserError
from common.config.core import TrainConfig
from common.config.strategies import ElasticConfig
from common.faults.watchdog import beat

# First: TensorFlow is imported there, quietly (common.world.quiet).
from common.frameworks import tf_backend
from common.frameworks.keras_optimizer import KERAS_3, distributed_optimizer
from common.frameworks.tf_backend import TFBackend, shard_dataset, tf
from common.loop import trainer
from common.loop.trainer import Trainer
from common.monitor.metrics import MetricSums, Throughput

keras = tf.keras


def sgd(cfg: TrainConfig):
    """The flags' SGD (``--base-lr``, ``--momentum``, ``--weight-decay``), already distributed
    (``keras_optimizer.distributed_optimizer``): what ``model.compile(optimizer=...)`` takes."""
    return distributed_optimizer(tf_backend.sgd(cfg), cfg)


def compiled_backend(rt, cfg: TrainConfig, model, train, val, **kwargs) -> TFBackend:
    """The TFBackend of a compiled model: its optimizer and loss are the ones given to
    ``model.compile`` (each given once); ``kwargs`` as for TFBackend (``num_classes``, ...)."""
    if getattr(model, "optimizer", None) is None or getattr(model, "loss", None) is None:
        raise UserError("compile the model with an optimizer and a loss first: "
                        "model.compile(optimizer=sgd(cfg), loss=..., metrics=['accuracy'])")
    loss = model.loss if callable(model.loss) else tf.keras.losses.get(model.loss)
    if KERAS_3:
        if hasattr(model.optimizer, "inner_optimizer"):  # mixed_float16 (GPUs before Ampere)
            raise UserError("--amp on this GPU needs loss scaling, which Keras 3's model.fit "
                            "decides on each worker's own gradients: use the custom loop "
                            "(recipes/tensorflow/mnist.py) or tf-keras (TF_USE_LEGACY_KERAS=1)")
        model.jit_compile = False  # Horovod's ops have no XLA kernels
    return TFBackend(rt, cfg, model, model.optimizer, loss, train, val, **kwargs)


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


class _TensorLogs(keras.callbacks.CallbackList):
    """Keras 3's callback list, handing each batch's logs over as tensors: Keras 3 converts
    them to Python numbers first (a device read every step); the core's callback reads them
    only when needed, as tf-keras lets it (``_supports_tf_logs``)."""

    def _on_train_batch_end(self, batch, logs=None):
        for callback in self.callbacks:
            callback.on_train_batch_end(batch, logs=logs)


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
    steps = t.n_steps * t.cfg.gradients.batches_per_allreduce
    callback = TrainerCallback(t, on_step)
    callbacks = _TensorLogs([callback], add_history=True, model=b.model, epochs=t.cfg.run.epochs,
                            steps=steps,
                            verbose=0) if KERAS_3 else [callback]
    quiet = _NotOurCallbackTiming()
    logging.getLogger("tensorflow").addFilter(quiet)
    try:
        b.model.fit(ds, epochs=t.cfg.run.epochs, initial_epoch=t.state.epoch,
                    steps_per_epoch=steps, callbacks=callbacks, verbose=0, shuffle=False)
    finally:
        logging.getLogger("tensorflow").removeFilter(quiet)


def fit(backend: TFBackend, cfg: TrainConfig, recipe: str,
        recipe_args: dict[str, Any] | None = None, describe: str = "",
        elastic: ElasticConfig | None = None) -> dict[str, Any]:
    """``common.loop.trainer.fit`` for a compiled Keras model: train with ``model.fit``."""
    workers = backend.runtime().size
    compiled = getattr(backend.model, "optimizer", None)
    inner = getattr(compiled, "inner_optimizer", compiled)  # a LossScaleOptimizer wraps it
    if workers > 1 and not callable(getattr(inner, "_allreduce", None)):
        raise UserError(f"the model is compiled with an optimizer ({type(inner).__name__}) that "
                        f"is not Horovod's, so each of the {workers} workers would train a model "
                        "of its own; compile it with distributed_optimizer(optimizer, cfg) "
                        "(common.frameworks.keras_optimizer)")
    return trainer.fit(backend, cfg, recipe, recipe_args, describe, elastic, run_epochs=_fit_epochs)
