"""ImageNet recipe (PyTorch): torchvision ResNet-50 (or any torchvision model) on image folders.

Run:  horovodrun -np 8 python recipes/pytorch/imagenet_resnet50.py \
          --train-dir /data/imagenet/train --val-dir /data/imagenet/val

Both folders use the ImageFolder layout (one sub-folder of images per class, the same classes in
both). The defaults are the recipe of Goyal et al. (2017), "Accurate, Large Minibatch SGD":
per-worker batch 32, base LR 0.0125 per worker scaled linearly with the number of workers,
5 warmup epochs, LR x0.1 at epochs 30, 60 and 80 of 90, momentum 0.9, weight decay 5e-5 and none
on batch-norm parameters and biases. Top-1 and top-5 accuracy are averaged exactly over ranks.
The lines marked `# distributed` are all that differ from a single-process script.
"""

from __future__ import annotations

import os

from common.config import ConfigError, core_parser, parse_config
from common.data.datasets import DataError
from common.faults.ending import run_main
from common.frameworks.torch_backend import TorchBackend, distributed_optimizer, init
from common.frameworks.torch_data import SeededTransform
from common.loop.trainer import fit

import torch
import torchvision
from torch import nn
from torchvision.transforms import v2

from recipes.shared import run_dirs

RECIPE = "pytorch/imagenet_resnet50"
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def image_folders(train_dir: str, val_dir: str, image_size: int, seed: int):
    """Train (random-resized-crop, flip) and validation (resize, centre crop) datasets."""
    for flag, path in (("--train-dir", train_dir), ("--val-dir", val_dir)):
        if not path or not os.path.isdir(path):
            raise DataError(f"{flag} {path!r} is not a directory of class folders")
    try:
        train = torchvision.datasets.ImageFolder(train_dir)
        val = torchvision.datasets.ImageFolder(val_dir)
    except (FileNotFoundError, RuntimeError) as e:
        raise DataError(str(e).splitlines()[0]) from None
    if train.classes != val.classes:
        raise DataError(f"--train-dir has {len(train.classes)} classes and --val-dir "
                        f"{len(val.classes)}; they must be the same class folders")
    to_tensor = [v2.PILToTensor(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD)]
    augment = v2.Compose([v2.RandomResizedCrop(image_size, antialias=True),
                          v2.RandomHorizontalFlip(), *to_tensor])
    center = v2.Compose([v2.Resize(int(round(image_size / 0.875)), antialias=True),
                         v2.CenterCrop(image_size), *to_tensor])
    return (SeededTransform(train, augment, seed), SeededTransform(val, center, seed),
            train.classes)


def build_model(name: str, num_classes: int) -> nn.Module:
    try:
        return torchvision.models.get_model(name, weights=None, num_classes=num_classes)
    except ValueError:
        raise ConfigError(f"--model {name!r} is not a torchvision model "
                          f"(e.g. resnet50, resnet18, mobilenet_v3_small)") from None


def param_groups(model: nn.Module, weight_decay: float, decay_bn_bias: bool):
    """Weight decay on weights only, unless --decay-bn-bias: none on BN parameters and biases."""
    if decay_bn_bias:
        return [{"params": list(model.parameters()), "weight_decay": weight_decay}]
    decay, no_decay = [], []
    for p in model.parameters():
        (no_decay if p.ndim <= 1 else decay).append(p)  # biases and norm scales/shifts are 1-D
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def main(argv: list[str] | None = None) -> None:
    parser = core_parser(__doc__.splitlines()[0], epochs=90, batch_size=32, base_lr=0.0125,
                         warmup_epochs=5, lr_decay="step", decay_epochs=(30, 60, 80),
                         momentum=0.9, weight_decay=5e-5, data_workers=4, data=True, **run_dirs(RECIPE))
    parser.add_argument("--train-dir", help="ImageFolder of training images")
    parser.add_argument("--val-dir", help="ImageFolder of validation images")
    parser.add_argument("--model", default="resnet50", help="any torchvision model name")
    parser.add_argument("--image-size", type=int, default=224, help="crop size in pixels")
    parser.add_argument("--label-smoothing", type=float, default=0.0,
                        help="label smoothing of the cross-entropy loss")
    parser.add_argument("--decay-bn-bias", action="store_true",
                        help="apply weight decay to batch-norm parameters and biases too")
    cfg, args = parse_config(parser, argv)
    if not 0 <= args.label_smoothing < 1:
        raise ConfigError("--label-smoothing must be in [0, 1)")
    rt = init(cfg)  # distributed: hvd.init, threads and device per rank

    train_set, val_set, classes = image_folders(args.train_dir, args.val_dir, args.image_size,
                                                cfg.run.seed)
    model = build_model(args.model, len(classes)).to(rt.device)
    optimizer = torch.optim.SGD(param_groups(model, cfg.optimizer.weight_decay, args.decay_bn_bias),
                                lr=cfg.schedule.base_lr, momentum=cfg.optimizer.momentum)
    optimizer = distributed_optimizer(optimizer, model, cfg)  # distributed
    loss_fn = nn.CrossEntropyLoss(label_smoothing=args.label_smoothing)
    backend = TorchBackend(rt, cfg, model, optimizer, loss_fn, train_set, val_set, topk=(1, 5),
                           num_classes=len(classes))
    fit(backend, cfg, RECIPE, vars(args), describe=f" ({args.model}, {len(classes)} classes)")


if __name__ == "__main__":
    run_main(main)
