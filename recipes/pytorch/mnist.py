"""MNIST recipe (PyTorch): a small CNN on handwritten digits, data-parallel with Horovod.

Run alone:           python recipes/pytorch/mnist.py
Run on 2 workers:    horovodrun -np 2 python recipes/pytorch/mnist.py
Real MNIST:          ... --data-dir DIR   (train-/t10k- images/labels IDX files, plain or .gz)

Without --data-dir it trains on scikit-learn's bundled 8x8 digits, so it works offline.
The lines marked `# distributed` are all that differ from a single-process script.
"""

from __future__ import annotations

from collections import OrderedDict

from common.config import parse_config
from common.data.datasets import ArrayDataset, load_mnist_or_digits
from common.faults.ending import run_main
from common.frameworks.torch_backend import TorchBackend, init, sgd
from common.loop.trainer import fit

import torch.nn.functional as F
from torch import nn

from recipes.shared import mnist_parser

RECIPE = "pytorch/mnist"


class Net(nn.Sequential):
    """Two conv layers and two dense ones; adaptive pooling makes it fit 8x8 and 28x28 inputs.

    A sequence of named layers, so that the hybrid-parallel recipe can cut it into stages."""

    def __init__(self) -> None:
        super().__init__(OrderedDict(
            conv1=nn.Conv2d(1, 32, 3, padding=1), relu1=nn.ReLU(),
            conv2=nn.Conv2d(32, 64, 3, padding=1), relu2=nn.ReLU(),
            pool=nn.AdaptiveAvgPool2d(4), flatten=nn.Flatten(),
            fc1=nn.Linear(64 * 4 * 4, 128), relu3=nn.ReLU(),
            fc2=nn.Linear(128, 10)))


def with_channel(ds: ArrayDataset) -> ArrayDataset:
    """Grey images (N, H, W) as (N, 1, H, W), the layout torch's conv layers take."""
    return ArrayDataset(ds.inputs[:, None], ds.labels, ds.name)


def build(cfg, rt) -> tuple[TorchBackend, str]:
    """The CNN, its optimizer and the data, handed to the core as a backend (and a description)."""
    train_set, val_set = load_mnist_or_digits(cfg.run.data_dir, cfg.run.folds, cfg.run.fold)
    model = Net().to(rt.device)
    optimizer = sgd(model, cfg)  # distributed: the flags' SGD, averaging gradients with Horovod
    backend = TorchBackend(rt, cfg, model, optimizer, F.cross_entropy, with_channel(train_set),
                           with_channel(val_set), num_classes=10)
    return backend, f" ({train_set.name})"


def main(argv: list[str] | None = None) -> None:
    parser = mnist_parser(__doc__.splitlines()[0], RECIPE)
    cfg, args = parse_config(parser, argv)
    rt = init(cfg)  # distributed: hvd.init, threads and device per rank
    backend, describe = build(cfg, rt)
    fit(backend, cfg, RECIPE, vars(args), describe)


if __name__ == "__main__":
    run_main(main)
