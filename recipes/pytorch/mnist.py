"""MNIST recipe (PyTorch): a small CNN on handwritten digits, data-parallel with Horovod.

Run alone:           python recipes/pytorch/mnist.py
Run on 2 workers:    horovodrun -np 2 python recipes/pytorch/mnist.py
Real MNIST:          ... --data-dir DIR   (train-/t10k- images/labels IDX files, plain or .gz)

Without --data-dir it trains on scikit-learn's bundled 8x8 digits, so it works offline.
The lines marked `# distributed` are all that differ from a single-process script.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from common.config import parse_config
from common.data import load_mnist_or_digits
from common.failure import run_main
from common.torch_backend import TorchBackend, distributed_optimizer, init
from common.trainer import fit
from recipes.shared import mnist_parser

RECIPE = "pytorch/mnist"


class Net(nn.Module):
    """Two conv layers and two dense ones; adaptive pooling makes it fit 8x8 and 28x28 inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(4)
        self.fc1 = nn.Linear(64 * 4 * 4, 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x))
        x = self.pool(F.relu(self.conv2(x)))
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


def as_tensors(ds) -> torch.utils.data.TensorDataset:
    """Images (N, H, W) in [0, 1] -> a dataset of (1, H, W) tensors and labels."""
    return torch.utils.data.TensorDataset(torch.from_numpy(ds.images).unsqueeze(1),
                                          torch.from_numpy(ds.labels))


def build(cfg, rt) -> tuple[TorchBackend, str]:
    """The CNN, its optimizer and the data, handed to the core as a backend (and a description)."""
    train_set, val_set = load_mnist_or_digits(cfg.run.data_dir, cfg.run.folds, cfg.run.fold)
    model = Net().to(rt.device)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.schedule.base_lr,
                                momentum=cfg.optimizer.momentum,
                                weight_decay=cfg.optimizer.weight_decay)
    optimizer = distributed_optimizer(optimizer, model, cfg)  # distributed
    backend = TorchBackend(rt, cfg, model, optimizer, F.cross_entropy, as_tensors(train_set),
                           as_tensors(val_set), num_classes=10)
    return backend, f" ({train_set.name})"


def main(argv: list[str] | None = None) -> None:
    parser = mnist_parser(__doc__.splitlines()[0], RECIPE)
    cfg, args = parse_config(parser, argv)
    rt = init(cfg)  # distributed: hvd.init, threads and device per rank
    backend, describe = build(cfg, rt)
    fit(backend, cfg, RECIPE, vars(args), describe)


if __name__ == "__main__":
    run_main(main)
