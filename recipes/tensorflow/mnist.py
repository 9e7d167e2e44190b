"""MNIST recipe (TensorFlow 2, custom training loop): a small Keras 3 CNN, data-parallel with Horovod.

Run alone:           python recipes/tensorflow/mnist.py
Run on 2 workers:    horovodrun -np 2 python recipes/tensorflow/mnist.py
Real MNIST:          ... --data-dir DIR   (train-/t10k- images/labels IDX files, plain or .gz)

Same data, flags, sharding, LR schedule, checkpoints, output and training loop
(common/loop/trainer.py) as recipes/pytorch/mnist.py. The train step is a tf.function with Horovod's
DistributedGradientTape (common/frameworks/tf_backend.py). Variables are broadcast from rank 0 once the
optimizer is built, before the first step.
"""

from __future__ import annotations

from common.config import parse_config
from common.data.datasets import load_mnist_or_digits
from common.faults.ending import run_main
from common.frameworks.tf_backend import TFBackend, init, sgd, tf
from common.loop.trainer import fit

from recipes.shared import mnist_parser

RECIPE = "tensorflow/mnist"
keras = tf.keras


def build_model(image_size: int):
    """Two conv layers and two dense ones, pooled to 4x4 whatever the image size."""
    return keras.Sequential([
        keras.Input((image_size, image_size, 1)),
        keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
        keras.layers.Conv2D(64, 3, padding="same", activation="relu"),
        keras.layers.AveragePooling2D(max(image_size // 4, 1)),
        keras.layers.Flatten(),
        keras.layers.Dense(128, activation="relu"),
        keras.layers.Dense(10),
    ])


def main(argv: list[str] | None = None) -> None:
    parser = mnist_parser(__doc__.splitlines()[0], RECIPE)
    cfg, args = parse_config(parser, argv)
    rt = init(cfg)  # distributed: hvd.init, threads and GPU per rank

    train, val = (d.with_channel() for d in
                  load_mnist_or_digits(cfg.run.data_dir, cfg.run.folds, cfg.run.fold))
    model = build_model(train.inputs.shape[1])
    optimizer = sgd(cfg)  # --base-lr, --momentum (the core adds --weight-decay)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    backend = TFBackend(rt, cfg, model, optimizer, loss_fn, train, val, num_classes=10)
    fit(backend, cfg, RECIPE, vars(args), f" ({train.name})")


if __name__ == "__main__":
    run_main(main)
