"""Shared owns what several recipes have in common: the MNIST hyper-parameters, parser and run folders.

The MNIST recipes (PyTorch, TF custom loop, Keras, both elastic ones) share one set of
hyper-parameters, so every framework trains the same run for the same flags. Each recipe's
default run folder (``--run-dir``: checkpoints, metrics, config.yaml) is under ``runs/``; the
shipped recipes' folder names predate their current names and are kept so that existing runs
still resume by default.
"""

from __future__ import annotations

from typing import Any

MNIST_DEFAULTS: dict[str, Any] = {"epochs": 12, "batch_size": 32, "base_lr": 0.05,
                                  "warmup_epochs": 2, "lr_decay": "cosine"}

RUN_FOLDERS = {
    "pytorch/mnist": "runs/mnist",
    "pytorch/elastic_mnist": "runs/elastic_mnist",
    "pytorch/hybrid_parallel": "runs/hybrid_parallel",
    "pytorch/parameter_server": "runs/parameter_server",
    "pytorch/cifar10_resnet": "runs/cifar10",
    "pytorch/imagenet_resnet50": "runs/imagenet",
    "tensorflow/mnist": "runs/tf_mnist",
    "tensorflow/keras_mnist": "runs/keras_mnist",
    "tensorflow/elastic_keras_mnist": "runs/elastic_keras_mnist",
}


def mnist_parser(description: str, recipe: str):
    """The core parser of an MNIST-family recipe: its hyper-parameters, folders and K-fold flags."""
    from common.config import core_parser

    return core_parser(description, kfold=True, data=True, **MNIST_DEFAULTS, **run_dirs(recipe))


def run_dirs(recipe: str) -> dict[str, str]:
    """A recipe's default ``--run-dir``: ``runs/<recipe>`` for any recipe name (the shipped
    recipes keep their older folders)."""
    return {"run_dir": RUN_FOLDERS.get(recipe, f"runs/{recipe}")}
