"""Elastic Keras MNIST recipe (TensorFlow, tf-keras ``model.fit``): survives workers that leave or join.

Run:  horovodrun -np 4 --min-np 2 --max-np 8 --host-discovery-script ./discover_hosts.sh \
          python recipes/tensorflow/elastic_keras_mnist.py

Horovod's ``hvd.elastic.TensorFlowKerasState`` holds model, optimizer and epoch; Horovod's
CommitStateCallback commits it every --commit-steps batches and at each epoch end. After a
worker fails or hosts change, the survivors roll back to the last commit and this recipe builds
the core's callbacks again for the new world: LR target rescaled to the new size, data
re-sharded, exact metric averaging over the new ranks. The interrupted epoch restarts from its
beginning with the committed weights when the world size changed.
"""

from __future__ import annotations

import os

os.environ["TF_USE_LEGACY_KERAS"] = "1"  # before TensorFlow is imported

import horovod.tensorflow.keras as hvd  # noqa: E402

from common import keras_callbacks as kc  # noqa: E402
from common import tf_backend as tfb  # noqa: E402
from common.config import MNIST_DEFAULTS, ConfigError, core_parser, one_line, parse_config, resolved, run_dirs  # noqa: E402
from common.data import load_mnist_or_digits, shard_indices, steps_per_epoch  # noqa: E402
from common.failure import run_main  # noqa: E402
from common.metrics import Throughput  # noqa: E402
from common.output import Reporter  # noqa: E402
from common.runtime import Runtime  # noqa: E402
from common.schedule import LRSchedule  # noqa: E402
from recipes.tensorflow.keras_mnist import epochs_dataset  # noqa: E402
from recipes.tensorflow.mnist import build_model  # noqa: E402

RECIPE = "tensorflow/elastic_keras_mnist"
tf = tfb.tf


class EpochState(tf.keras.callbacks.Callback):
    """Keep ``state.epoch`` = epochs done (Keras passes absolute epoch numbers).

    Used instead of Horovod's UpdateEpochStateCallback, which adds ``initial_epoch`` to
    Keras' already absolute epoch once fit starts past epoch 0, and UpdateBatchStateCallback,
    which shortens the restarted epoch; this recipe restarts an interrupted epoch whole.
    """

    def __init__(self, state) -> None:
        super().__init__()
        self.state = state

    def on_epoch_end(self, epoch, logs=None):
        self.state.epoch = epoch + 1


def main(argv: list[str] | None = None) -> None:
    parser = core_parser(__doc__.splitlines()[0], **MNIST_DEFAULTS,
                         **run_dirs("elastic_keras_mnist"))
    parser.add_argument("--commit-steps", type=int, default=10,
                        help="commit the elastic state every N batches (rollback point)")
    cfg, args = parse_config(parser, argv)
    if args.commit_steps < 1 or cfg.batches_per_allreduce != 1:
        raise ConfigError("--commit-steps must be >= 1; --batches-per-allreduce must be 1 here")
    rt = tfb.init(cfg)
    train, val = load_mnist_or_digits(cfg.data_dir)
    model = build_model(train.images.shape[1])
    optimizer = hvd.DistributedOptimizer(
        tf.keras.optimizers.SGD(cfg.base_lr, momentum=cfg.momentum),
        compression=tfb.compression(cfg), op=hvd.Adasum if cfg.use_adasum else hvd.Average)
    model.compile(optimizer=optimizer, metrics=["accuracy"],
                  loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    optimizer.build(model.trainable_variables)
    checkpointer = tfb.Checkpointer(rt, cfg, RECIPE, model, optimizer,
                                    steps_per_epoch(len(train), rt.size, cfg.batch_size))
    epoch0, _, last_path, notices = checkpointer.restore()
    state = hvd.elastic.TensorFlowKerasState(model, optimizer, epoch=epoch0)
    clock = Throughput()
    result = {}

    @hvd.elastic.run
    def train_(state) -> None:
        # Everything that depends on the world is built here, again after every reset.
        rt = Runtime(hvd.rank(), hvd.size(), hvd.local_rank(), hvd.local_size())
        n_steps = steps_per_epoch(len(train), rt.size, cfg.batch_size)
        out = Reporter(rt.is_root, cfg.metrics_file, progress=False)
        if state.epoch == epoch0:
            out.print(f"config: {one_line(resolved(RECIPE, cfg, vars(args), rt.size))}")
            for notice in notices:
                out.print(f"note: {notice}")
        out.print(f"{rt.size} worker(s): epochs {state.epoch + 1}..{cfg.epochs}, "
                  f"{n_steps} steps/epoch")
        checkpointer.rt, checkpointer.steps_per_epoch = rt, n_steps
        lr = kc.LRScheduleCallback(LRSchedule.from_config(cfg, rt.size, n_steps),
                                   state.epoch * n_steps)
        ckpt = kc.CheckpointCallback(checkpointer, n_steps, cfg.epochs, cfg.checkpoint_epochs)
        ckpt.last_path = result.get("checkpoint", last_path)
        val_shard = len(shard_indices(len(val), rt.rank, rt.size, 0, 0, False, drop_tail=False))
        report = kc.ReportCallback(out, cfg.epochs, n_steps, rt.size,
                                   n_steps * cfg.batch_size * rt.size, lr, ckpt)
        model.fit(epochs_dataset(train, rt, cfg.seed, state.epoch, cfg.epochs, cfg.batch_size,
                                 cfg.batch_size),
                  epochs=cfg.epochs, initial_epoch=state.epoch, steps_per_epoch=n_steps,
                  validation_data=tfb.eval_dataset(val.images[..., None], val.labels, rt),
                  callbacks=[EpochState(state),
                             hvd.elastic.CommitStateCallback(state, args.commit_steps),
                             kc.MetricAverage(n_steps * cfg.batch_size, val_shard),
                             lr, ckpt, report],
                  verbose=0)
        result.update(out=out, report=report, checkpoint=ckpt.last_path, size=rt.size,
                      step=cfg.epochs * n_steps)

    train_(state)
    report = result["report"]
    result["out"].final(recipe=RECIPE, epochs=cfg.epochs, step=result["step"],
                        train=report.train, val=report.val,
                        samples_per_sec=report.samples_per_sec, world_size=result["size"],
                        wall=clock.elapsed, checkpoint=result["checkpoint"])


if __name__ == "__main__":
    run_main(main)
