"""Keras MNIST recipe (TensorFlow 2.21, Keras 3 ``model.fit``): the MNIST CNN, averaged through Horovod.

Run alone:           python recipes/tensorflow/keras_mnist.py
Run on 2 workers:    horovodrun -np 2 python recipes/tensorflow/keras_mnist.py

``model.fit`` on Keras 3 (or on tf-keras: set ``TF_USE_LEGACY_KERAS=1`` in the environment) with
the core's distributed optimizer (common/frameworks/keras_optimizer.py); one core callback drives
the same trainer as the custom loops (LR schedule, exact metric averaging, checkpoints, output;
common/loop/keras_fit.py). Resumes at epoch boundaries.
"""

from __future__ import annotations

from common.config import parse_config
from common.data.datasets import load_mnist_or_digits
from common.faults.ending import run_main
from common.frameworks.tf_backend import TFBackend, init, tf
from common.loop.keras_fit import compiled_backend, fit, sgd

from recipes.shared import mnist_parser
from recipes.tensorflow.mnist import build_model

RECIPE = "tensorflow/keras_mnist"


def build(cfg, rt) -> tuple[TFBackend, str]:
    """The compiled CNN and the data, handed to the core as a backend (and a description)."""
    train, val = (d.with_channel() for d in
                  load_mnist_or_digits(cfg.run.data_dir, cfg.run.folds, cfg.run.fold))
    model = build_model(train.inputs.shape[1])
    model.compile(optimizer=sgd(cfg),  # distributed: the flags' SGD, averaging with Horovod
                  loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    return compiled_backend(rt, cfg, model, train, val, num_classes=10), f" ({train.name})"


def main(argv: list[str] | None = None) -> None:
    parser = mnist_parser(__doc__.splitlines()[0], RECIPE)
    cfg, args = parse_config(parser, argv)
    rt = init(cfg)  # distributed: hvd.init, threads and GPU per rank
    backend, describe = build(cfg, rt)
    fit(backend, cfg, RECIPE, vars(args), describe)


if __name__ == "__main__":
    run_main(main)
