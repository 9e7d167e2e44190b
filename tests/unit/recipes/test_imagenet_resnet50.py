"""Tests of recipes/pytorch/imagenet_resnet50.py in one process: its parameter groups."""

from __future__ import annotations


def test_imagenet_param_groups_skip_bn_and_bias():
    import torchvision

    from recipes.pytorch.imagenet_resnet50 import param_groups

    model = torchvision.models.resnet18(num_classes=3)
    decay, no_decay = param_groups(model, 5e-5, decay_bn_bias=False)
    assert decay["weight_decay"] == 5e-5 and no_decay["weight_decay"] == 0.0
    bn_and_bias = {id(m.weight) for m in model.modules()
                   if isinstance(m, torch_bn())} | {id(model.fc.bias)}
    assert bn_and_bias <= {id(p) for p in no_decay["params"]}
    assert id(model.fc.weight) in {id(p) for p in decay["params"]}
    assert len(param_groups(model, 5e-5, decay_bn_bias=True)) == 1


def torch_bn():
    import torch

    return torch.nn.BatchNorm2d
