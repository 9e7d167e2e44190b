"""MNIST recipe (TensorFlow 2, custom training loop): a small Keras 3 CNN, data-parallel with Horovod.

Run alone:           python recipes/tensorflow/mnist.py
Run on 2 workers:    horovodrun -np 2 python recipes/tensorflow/mnist.py
Real MNIST:          ... --data-dir DIR   (train-/t10k- images/labels IDX files, plain or .gz)

Same data, flags, sharding, LR schedule, checkpoints and output as recipes/pytorch/mnist.py. The
train step is a tf.function with Horovod's DistributedGradientTape (common/tf_training.py).
Variables are broadcast from rank 0 once the optimizer is built, before the first step.
"""

from __future__ import annotations

from common import tf_backend as tfb
from common.config import MNIST_DEFAULTS, core_parser, parse_config, run_dirs
from common.data import load_mnist_or_digits
from common.failure import run_main
from common.tf_training import fit

RECIPE = "tensorflow/mnist"
keras = tfb.tf.keras


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
    parser = core_parser(__doc__.splitlines()[0], **MNIST_DEFAULTS,
                         **run_dirs("tf_mnist"))
    cfg, args = parse_config(parser, argv)
    rt = tfb.init(cfg)  # distributed: hvd.init, threads and GPU per rank

    train, val = load_mnist_or_digits(cfg.data_dir)
    model = build_model(train.images.shape[1])
    optimizer = keras.optimizers.SGD(cfg.base_lr, momentum=cfg.momentum,
                                     weight_decay=cfg.weight_decay or None)
    fit(rt, cfg, RECIPE, model, optimizer, train, val, vars(args), f" ({train.name})")


if __name__ == "__main__":
    run_main(main)
