"""CIFAR-10 recipe (PyTorch): a CIFAR-style ResNet (He et al., 2016: ResNet-20/32/44/56/110), data-parallel.

Run:  horovodrun -np 2 python recipes/pytorch/cifar10_resnet.py --data-dir DIR

DIR holds CIFAR-10's "python version" batches (data_batch_1..5, test_batch), directly or in
cifar-10-batches-py/. Training augments each sample with a random 32x32 crop of the image padded
by 4 and a random horizontal flip, seeded by (seed, epoch, sample) so any rank or resumed run
draws the same augmentation; both splits are normalised per channel with the training set's
mean and standard deviation. The lines marked `# distributed` are all that differ from a
single-process script.
"""

from __future__ import annotations

from common.config import ConfigError, core_parser, parse_config
from common.data.datasets import load_cifar10
from common.faults.ending import run_main
from common.frameworks.torch_backend import TorchBackend, init, sgd
from common.frameworks.torch_data import SeededTransform
from common.loop.trainer import fit

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.transforms import v2

from recipes.shared import run_dirs

RECIPE = "pytorch/cifar10_resnet"


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False),
                                          nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for 32x32 images: three stages of n blocks with 16, 32 and 64 channels."""

    def __init__(self, depth: int = 20, num_classes: int = 10) -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise ConfigError(f"--depth must be 6n+2 (20, 32, 44, 56, 110), got {depth}")
        n = (depth - 2) // 6
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16),
                                  nn.ReLU())
        layers, c_in = [], 16
        for c_out, stride in ((16, 1), (32, 2), (64, 2)):
            for i in range(n):
                layers.append(BasicBlock(c_in, c_out, stride if i == 0 else 1))
                c_in = c_out
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(self.stem(x))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def cifar_datasets(data_dir: str, seed: int):
    """Train (augmented) and validation datasets of uint8 CHW tensors, normalised per channel."""
    (x_train, y_train), (x_val, y_val) = load_cifar10(data_dir)
    pixels = torch.from_numpy(x_train).float().div_(255)
    mean, std = pixels.mean(dim=(0, 2, 3)).tolist(), pixels.std(dim=(0, 2, 3)).clamp_min(1e-6).tolist()
    normalise = [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]
    augment = v2.Compose([v2.RandomCrop(32, padding=4), v2.RandomHorizontalFlip(), *normalise])
    train = torch.utils.data.TensorDataset(torch.from_numpy(x_train), torch.from_numpy(y_train))
    val = torch.utils.data.TensorDataset(torch.from_numpy(x_val), torch.from_numpy(y_val))
    return (SeededTransform(train, augment, seed),
            SeededTransform(val, v2.Compose(normalise), seed))


def main(argv: list[str] | None = None) -> None:
    parser = core_parser(__doc__.splitlines()[0], epochs=160, batch_size=128, base_lr=0.1,
                         weight_decay=1e-4, warmup_epochs=2, lr_decay="cosine",
                         data=True, **run_dirs(RECIPE))
    parser.add_argument("--depth", type=int, default=20, help="ResNet depth, 6n+2")
    cfg, args = parse_config(parser, argv)
    if not cfg.run.data_dir:
        raise ConfigError("--data-dir is required: a folder with CIFAR-10's python batches")
    rt = init(cfg)  # distributed: hvd.init, threads and device per rank

    train_set, val_set = cifar_datasets(cfg.run.data_dir, cfg.run.seed)
    model = CifarResNet(args.depth).to(rt.device)
    optimizer = sgd(model, cfg)  # distributed: the flags' SGD, averaging gradients
    backend = TorchBackend(rt, cfg, model, optimizer, F.cross_entropy, train_set, val_set,
                           num_classes=10)
    fit(backend, cfg, RECIPE, vars(args), describe=f" (ResNet-{args.depth})")


if __name__ == "__main__":
    run_main(main)
