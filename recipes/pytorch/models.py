"""Models owns what the strategy recipes train: the MNIST CNN or ResNet-18, on the digits or synthetic images.

Both networks are ``nn.Sequential``s of named layers, so a pipeline can cut them into stages
and parameter servers can shard them by name; their parameter names are the usual ones (the
MNIST recipe's ``Net``, torchvision's ``resnet18``). ``--synthetic N`` replaces the digits by N
random 3x32x32 images of 10 classes: for throughput, where accuracy means nothing.
"""

from __future__ import annotations

import argparse
from collections import OrderedDict

from common.config import ConfigError
from common.data.datasets import load_mnist_or_digits
from common.frameworks.torch_backend import as_tensors

import torch
from torch import nn

from recipes.pytorch.mnist import Net, with_channel

MODELS = ("cnn", "resnet18")


def add_flags(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("model and data")
    g.add_argument("--model", choices=MODELS, default="cnn",
                   help="cnn: the MNIST recipe's CNN; resnet18: torchvision's ResNet-18")
    g.add_argument("--synthetic", type=int, default=0, metavar="N",
                   help="train on N random 3x32x32 images (validation: N/4) instead of the "
                        "digits (throughput only)")


def resnet18(in_channels: int, classes: int = 10) -> nn.Sequential:
    """torchvision's ResNet-18 as a sequence of its own named children (plus a flatten)."""
    from torchvision.models import resnet18 as tv_resnet18

    m = tv_resnet18(num_classes=classes)
    if in_channels != 3:
        m.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    names = ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4", "avgpool"]
    return nn.Sequential(OrderedDict([*((n, getattr(m, n)) for n in names),
                                      ("flatten", nn.Flatten()), ("fc", m.fc)]))


def synthetic(n: int, seed: int) -> torch.utils.data.TensorDataset:
    g = torch.Generator().manual_seed(seed)
    return torch.utils.data.TensorDataset(torch.randn(n, 3, 32, 32, generator=g),
                                          torch.randint(0, 10, (n,), generator=g))


def build(args: argparse.Namespace, cfg) -> tuple[nn.Sequential, object, object, str]:
    """(model, training set, validation set, data name) for the flags; the model is built after
    the core seeded every RNG, so every rank builds the same one."""
    if args.synthetic < 0:
        raise ConfigError(f"--synthetic must be >= 0, got {args.synthetic}")
    if args.synthetic and cfg.run.folds:
        raise ConfigError("--folds splits the digits or MNIST, not --synthetic data")
    if args.synthetic:
        train, val = synthetic(args.synthetic, 0), synthetic(max(args.synthetic // 4, 1), 1)
        name, channels = f"synthetic 3x32x32 x {args.synthetic}", 3
    else:
        train_ds, val_ds = load_mnist_or_digits(cfg.run.data_dir, cfg.run.folds, cfg.run.fold)
        train, val = (as_tensors(with_channel(d)) for d in (train_ds, val_ds))
        name, channels = train_ds.name, 1
    model = Net() if args.model == "cnn" else resnet18(channels)
    return model, train, val, name
