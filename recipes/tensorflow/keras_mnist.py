"""Keras MNIST recipe (TensorFlow 2.21, tf-keras ``model.fit``): the MNIST CNN with Horovod's Keras optimizer.

Run alone:           python recipes/tensorflow/keras_mnist.py
Run on 2 workers:    horovodrun -np 2 python recipes/tensorflow/keras_mnist.py

``model.fit`` through tf-keras (this recipe sets ``TF_USE_LEGACY_KERAS=1`` before TensorFlow
loads) with Horovod's Keras ``DistributedOptimizer`` and the core's own callbacks for the LR
schedule, exact metric averaging, checkpoints and output (common/keras_callbacks.py), which
replace Horovod's callbacks that crash on TF 2.21. Resumes at epoch boundaries.
"""

from __future__ import annotations

import os

os.environ["TF_USE_LEGACY_KERAS"] = "1"  # before TensorFlow is imported

import horovod.tensorflow.keras as hvd_keras  # noqa: E402

from common import keras_callbacks as kc  # noqa: E402
from common import tf_backend as tfb  # noqa: E402
from common.config import MNIST_DEFAULTS, core_parser, one_line, parse_config, resolved, run_dirs  # noqa: E402
from common.data import load_mnist_or_digits, shard_indices, steps_per_epoch  # noqa: E402
from common.failure import UserError, run_main  # noqa: E402
from common.metrics import Throughput  # noqa: E402
from common.output import Reporter  # noqa: E402
from common.schedule import LRSchedule  # noqa: E402
from recipes.tensorflow.mnist import build_model  # noqa: E402

RECIPE = "tensorflow/keras_mnist"
tf = tfb.tf


def epochs_dataset(train, rt, seed: int, first: int, last: int, batch: int,
                   samples_per_step: int) -> tf.data.Dataset:
    """Epochs first..last-1 of this rank's batches, back to back, as model.fit reads them."""
    ds = None
    for epoch in range(first, last):
        part = tfb.shard_dataset(train.images[..., None], train.labels, rt, seed, epoch, batch,
                                 samples_per_step=samples_per_step)
        ds = part if ds is None else ds.concatenate(part)
    return ds


def main(argv: list[str] | None = None) -> None:
    parser = core_parser(__doc__.splitlines()[0], **MNIST_DEFAULTS,
                         **run_dirs("keras_mnist"))
    cfg, args = parse_config(parser, argv)
    rt = tfb.init(cfg)  # distributed
    out = Reporter(rt.is_root, cfg.metrics_file, progress=False, log_dir=cfg.log_dir)
    out.print(f"config: {one_line(resolved(RECIPE, cfg, vars(args), rt.size))}")

    train, val = load_mnist_or_digits(cfg.data_dir)
    samples_per_step = cfg.batch_size * cfg.batches_per_allreduce
    n_steps = steps_per_epoch(len(train), rt.size, samples_per_step)
    if n_steps < 1:
        raise UserError(f"{len(train)} samples are too few for {rt.size} worker(s)")
    model = build_model(train.images.shape[1])
    optimizer = hvd_keras.DistributedOptimizer(  # distributed
        tf.keras.optimizers.SGD(cfg.base_lr, momentum=cfg.momentum),
        compression=tfb.compression(cfg), backward_passes_per_step=cfg.batches_per_allreduce,
        average_aggregated_gradients=True,  # mean over the passes, as in the PyTorch recipes
        op=hvd_keras.Adasum if cfg.use_adasum else hvd_keras.Average,
        gradient_predivide_factor=cfg.gradient_predivide_factor)
    model.compile(optimizer=optimizer, metrics=["accuracy"],
                  loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    optimizer.build(model.trainable_variables)
    checkpointer = tfb.Checkpointer(rt, cfg, RECIPE, model, optimizer, n_steps)
    epoch0, step, last_path, notices = checkpointer.restore()  # distributed: broadcast too
    for notice in notices:
        out.print(f"note: {notice}")
    if epoch0 * n_steps != step:
        out.print(f"note: model.fit resumes at epoch boundaries: epoch {epoch0 + 1} restarts")
    schedule = LRSchedule.from_config(cfg, rt.size, n_steps)
    passes = cfg.batches_per_allreduce  # model.fit sees each pass as a batch
    lr = kc.LRScheduleCallback(schedule, epoch0 * n_steps, batches_per_step=passes)
    ckpt = kc.CheckpointCallback(checkpointer, n_steps, cfg.epochs, cfg.checkpoint_epochs)
    ckpt.last_path = last_path
    val_shard = len(shard_indices(len(val), rt.rank, rt.size, 0, 0, False, drop_tail=False))
    report = kc.ReportCallback(out, cfg.epochs, n_steps, rt.size,
                               n_steps * samples_per_step * rt.size, lr, ckpt)
    out.print(f"{RECIPE}: {len(train)} train / {len(val)} val samples ({train.name}), "
              f"{rt.size} worker(s) x batch {cfg.batch_size} x {passes} pass(es), "
              f"{n_steps} steps/epoch, "
              f"LR {cfg.base_lr:g} -> {schedule.target_lr:g}")
    clock = Throughput()
    if epoch0 < cfg.epochs:
        model.fit(epochs_dataset(train, rt, cfg.seed, epoch0, cfg.epochs, cfg.batch_size,
                                 samples_per_step),
                  epochs=cfg.epochs, initial_epoch=epoch0, steps_per_epoch=n_steps * passes,
                  validation_data=tfb.eval_dataset(val.images[..., None], val.labels, rt),
                  callbacks=[kc.MetricAverage(n_steps * samples_per_step, val_shard),
                             lr, ckpt, report],
                  verbose=0)
    out.final(recipe=RECIPE, epochs=cfg.epochs, step=cfg.epochs * n_steps, train=report.train,
              val=report.val, samples_per_sec=report.samples_per_sec, world_size=rt.size,
              wall=clock.elapsed, checkpoint=ckpt.last_path)


if __name__ == "__main__":
    run_main(main)
