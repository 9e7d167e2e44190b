"""Tests of common/strategies/param_server.py in one process: how parameters are sharded over servers."""

from __future__ import annotations

import pytest


def test_more_servers_than_tensors_is_an_error():
    from common.config.core import ConfigError
    from common.strategies.param_server import shard_names
    from recipes.pytorch.mnist import Net

    assert shard_names(Net(), 2) == [["fc1.weight"], ["conv1.weight", "conv1.bias", "conv2.weight",
                                                      "conv2.bias", "fc1.bias", "fc2.weight",
                                                      "fc2.bias"]]
    with pytest.raises(ConfigError, match="--servers 9 is more than the model's 8"):
        shard_names(Net(), 9)
