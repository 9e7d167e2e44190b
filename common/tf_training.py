"""TF training owns the TensorFlow custom-loop run: resume, per-step LR, tf.function steps, epochs, output.

The TensorFlow twin of ``common.torch_training.fit``: the same schedule, sharding, checkpoint
policy, metrics, printed lines and JSON records, so a recipe in either framework behaves alike.
The train step runs under ``tf.function`` with Horovod's ``DistributedGradientTape``. With
``--batches-per-allreduce K`` the K micro-batches are traced in one tape, so their gradients are
summed locally and allreduced once (the same update as K accumulated backward passes; the K
micro-batches' activations are held at once).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from common import tf_backend as tfb
from common.config import TrainConfig
from common.data import steps_per_epoch
from common.failure import UserError
from common.metrics import MetricSums, Throughput
from common.output import Reporter
from common.runtime import Runtime
from common.schedule import LRSchedule

tf = tfb.tf


def make_train_step(model, optimizer, cfg: TrainConfig):
    """A tf.function: one optimizer step over a batch of K micro-batches; returns (loss, correct)."""
    loss_fn = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    passes = cfg.batches_per_allreduce

    @tf.function
    def step(x, y):
        n = tf.cast(tf.shape(y)[0], tf.float32)
        total, correct = tf.constant(0.0), tf.constant(0.0)
        with tf.GradientTape() as tape:
            for xs, ys in zip(tf.split(x, passes), tf.split(y, passes), strict=True):
                out = model(xs, training=True)
                loss = loss_fn(ys, out)
                total += loss * tf.cast(tf.shape(ys)[0], tf.float32) / n
                hits = tf.argmax(out, 1, output_type=tf.int32) == tf.cast(ys, tf.int32)
                correct += tf.reduce_sum(tf.cast(hits, tf.float32))
        tape = tfb.distributed_tape(tape, cfg)  # distributed: allreduce in tape.gradient
        grads = tape.gradient(total, tfb.tf_variables(model.trainable_variables))
        optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
        return total, correct

    return step


def fit(rt: Runtime, cfg: TrainConfig, recipe: str, model, optimizer, train, val,
        recipe_args: dict[str, Any] | None = None, describe: str = "") -> dict[str, Any]:
    """Train a Keras model with a custom loop; ``train``/``val`` are ImageDatasets (N, H, W)."""
    out = Reporter(rt.is_root, cfg.metrics_file, cfg.progress, cfg.log_dir)
    samples_per_step = cfg.batch_size * cfg.batches_per_allreduce
    n_steps = steps_per_epoch(len(train), rt.size, samples_per_step)
    if n_steps < 1:
        raise UserError(f"{len(train)} training samples are too few for {rt.size} worker(s) "
                        f"x {samples_per_step} samples per step")
    if cfg.amp:
        out.print("note: --amp is not wired for TensorFlow recipes yet; training in fp32")
    schedule = LRSchedule.from_config(cfg, rt.size, n_steps)
    optimizer.build(model.trainable_variables)
    checkpointer = tfb.Checkpointer(rt, cfg, recipe, model, optimizer, n_steps)
    epoch0, step, last_path, notices = checkpointer.restore()  # distributed: broadcast too
    out.start(recipe=recipe, cfg=cfg, recipe_args=recipe_args, world_size=rt.size,
              notices=notices, n_train=len(train), n_val=len(val), describe=describe,
              n_steps=n_steps, target_lr=schedule.target_lr, epoch=epoch0, step=step,
              checkpoint=last_path)

    images, val_images = train.images[..., None], val.images[..., None]
    train_step = make_train_step(model, optimizer, cfg)
    run_clock, train_sums, val_sums, samples_per_sec = Throughput(), MetricSums(), MetricSums(), 0.0
    stopped = False
    for epoch in range(epoch0, cfg.epochs):
        done_in_epoch = step - epoch * n_steps
        local, clock, seen = MetricSums(), Throughput(), 0
        bar = out.bar(n_steps, f"epoch {epoch + 1}/{cfg.epochs}")
        bar.update(done_in_epoch)
        for x, y in tfb.shard_dataset(images, train.labels, rt, cfg.seed, epoch,
                                      samples_per_step, done_in_epoch):
            lr = schedule(step)
            tfb.set_lr(optimizer, lr)
            loss, correct = train_step(x, y)
            n = int(y.shape[0])
            local.add(float(loss), float(correct), n)
            step, seen = step + 1, seen + n
            bar.update()
            bar.set_postfix(loss=f"{float(loss):.3f}", lr=f"{lr:.3g}")
            stopped = cfg.max_steps is not None and step >= cfg.max_steps
            if (cfg.checkpoint_steps and step % cfg.checkpoint_steps == 0
                    and step != (epoch + 1) * n_steps and not stopped):
                checkpointer.save(epoch, step)
            if stopped:
                break
        bar.close()
        elapsed = clock.elapsed
        samples_per_sec = tfb.allreduce_sum(np.array([float(seen)]))[0] / max(elapsed, 1e-9)
        train_sums = local.global_sums(tfb.allreduce_sum)
        val_sums = tfb.evaluate(model, val_images, val.labels, rt).global_sums(tfb.allreduce_sum)
        epoch_done = epoch + 1 if step == (epoch + 1) * n_steps else epoch
        saved = None
        if epoch_done != epoch + 1 or epoch_done == cfg.epochs or (
                cfg.checkpoint_epochs and epoch_done % cfg.checkpoint_epochs == 0):
            saved = checkpointer.save(epoch_done, step)
        last_path = saved or last_path
        out.epoch(epoch=epoch + 1, epochs=cfg.epochs, step=step, lr=schedule(max(step - 1, 0)),
                  train=train_sums, val=val_sums, samples_per_sec=samples_per_sec,
                  world_size=rt.size, elapsed=elapsed, checkpoint=saved)
        if stopped:
            break
    return out.final(recipe=recipe, epochs=cfg.epochs, step=step, train=train_sums,
                     val=val_sums, samples_per_sec=samples_per_sec, world_size=rt.size,
                     wall=run_clock.elapsed, checkpoint=last_path)
