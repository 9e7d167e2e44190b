"""Tests of common/strategies/pipeline.py in one process: how a model is cut into stages."""

from __future__ import annotations

import pytest


def test_more_stages_than_layers_is_an_error():
    from collections import OrderedDict

    from torch import nn

    from common.config.core import ConfigError
    from common.strategies.pipeline import partition

    model = nn.Sequential(OrderedDict(a=nn.Linear(2, 2), act=nn.ReLU(), b=nn.Linear(2, 2)))
    with pytest.raises(ConfigError, match="--stages 3 is more than the model's 2 layers"):
        partition(model, 3)


def test_partition_keeps_order_and_balances_layers_with_parameters():
    from common.strategies.pipeline import partition
    from recipes.pytorch.mnist import Net

    net = Net()
    assert partition(net, 1) == [list(dict(net.named_children()))]
    assert partition(net, 2) == [["conv1", "relu1", "conv2", "relu2", "pool", "flatten"],
                                 ["fc1", "relu3", "fc2"]]
    assert partition(net, 4) == [["conv1", "relu1"], ["conv2", "relu2", "pool", "flatten"],
                                 ["fc1", "relu3"], ["fc2"]]
