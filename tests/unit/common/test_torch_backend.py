"""The PyTorch backend's TensorBoard writer: the scalars land, and TensorFlow stays out."""

from __future__ import annotations

import dataclasses
import sys

import numpy as np
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from common.frameworks.torch_backend import tensorboard_writer


def test_the_tensorboard_writer_writes_scalars_without_importing_tensorflow(tmp_path):
    writer = tensorboard_writer(str(tmp_path))
    writer.add_scalar("train/loss", 0.5, 3)
    writer.close()
    # torch's SummaryWriter used to pull TensorFlow in (9 s on rank 0 of every PyTorch run)
    assert "tensorflow" not in sys.modules
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("train/loss")] == [(3, 0.5)]


def test_a_plain_optimizer_on_several_workers_is_refused_in_one_line():
    import pytest
    import torch
    import torch.nn.functional as F

    from common.base.errors import UserError
    from common.config.core import TrainConfig
    from common.frameworks.torch_backend import TorchBackend
    from common.world.runtime import Runtime

    cfg = TrainConfig.from_flags(batch_size=4, momentum=0.0)
    model = torch.nn.Linear(3, 2)
    data = torch.utils.data.TensorDataset(torch.zeros(8, 3), torch.zeros(8, dtype=torch.long))
    plain = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(UserError, match=r"^the optimizer \(SGD\) is not Horovod's .* each of the "
                                         r"2 workers would train a model of its own"):
        TorchBackend(Runtime(0, 2, 0, 2), cfg, model, plain, F.cross_entropy, data, data)
    TorchBackend(Runtime(0, 1, 0, 1), cfg, model, plain, F.cross_entropy, data, data)  # alone: fine


def test_optimizer_flags_always_act_or_are_refused_in_one_line(monkeypatch):
    """--momentum and --weight-decay reach the optimizer through sgd(); a recipe's own optimizer
    that uses other values, or --momentum given to an optimizer without momentum, is refused."""
    import pytest
    import torch
    import torch.nn.functional as F

    from common.config.core import ConfigError, TrainConfig
    from common.data.datasets import ArrayDataset
    from common.frameworks import torch_backend
    from common.frameworks.torch_backend import TorchBackend, optimizer_settings, sgd
    from common.world.runtime import Runtime

    # One process without Horovod started: Horovod's wrapper is left out of sgd() here.
    monkeypatch.setattr(torch_backend, "distributed_optimizer", lambda opt, model, cfg: opt)

    model = torch.nn.Linear(3, 2)
    data = ArrayDataset(np.zeros((8, 3), np.float32), np.zeros(8, np.int64), "zeros")
    one = Runtime(0, 1, 0, 1)
    cfg = TrainConfig.from_flags(batch_size=4, momentum=0.5, weight_decay=1e-4)
    assert optimizer_settings(sgd(model, cfg)) == (0.5, 1e-4)
    TorchBackend(one, cfg, model, sgd(model, cfg), F.cross_entropy, data, data)  # arrays taken
    plain = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    with pytest.raises(ConfigError, match=r"^--momentum is 0.5 but the recipe's SGD uses 0.9: "):
        TorchBackend(one, cfg, model, plain, F.cross_entropy, data, data)
    adam = torch.optim.Adam(model.parameters(), lr=0.1)
    quiet = TrainConfig.from_flags(batch_size=4)
    TorchBackend(one, quiet, model, adam, F.cross_entropy, data, data)  # --momentum not given
    given = dataclasses.replace(quiet, changed=("momentum",))
    with pytest.raises(ConfigError, match=r"^--momentum 0.9 does not apply to Adam"):
        TorchBackend(one, given, model, adam, F.cross_entropy, data, data)


def test_a_host_copy_holds_its_step_and_reuses_the_buffers_of_the_one_before(monkeypatch):
    """What an async checkpoint writes: a copy the next steps do not change, made into the
    previous copy's buffers (no new allocation), tied weights copied once."""
    import torch
    import torch.nn.functional as F

    from common.config.core import TrainConfig
    from common.data.datasets import ArrayDataset
    from common.frameworks import torch_backend
    from common.frameworks.torch_backend import TorchBackend, sgd
    from common.world.runtime import Runtime

    monkeypatch.setattr(torch_backend, "distributed_optimizer", lambda opt, model, cfg: opt)
    model = torch.nn.Sequential(torch.nn.Embedding(5, 3), torch.nn.Linear(3, 5))
    model[1].weight = model[0].weight  # tied
    data = ArrayDataset(np.zeros((8, 1), np.int64), np.zeros(8, np.int64), "zeros")
    cfg = TrainConfig.from_flags(batch_size=4, momentum=0.9)
    backend = TorchBackend(Runtime(0, 1, 0, 1), cfg, model, sgd(model, cfg),
                           lambda out, y: F.cross_entropy(out[:, 0], y), data, data)
    first = backend.host_copy(backend.state())
    weight = first["model"]["0.weight"]
    assert weight is first["model"]["1.weight"]  # one copy of the tied tensor
    assert torch.equal(weight, model[0].weight) and weight.data_ptr() != model[0].weight.data_ptr()
    with torch.no_grad():
        model[0].weight.add_(1.0)  # training goes on: the copy keeps its step
    assert not torch.equal(weight, model[0].weight)
    second = backend.host_copy(backend.state())
    assert second["model"]["0.weight"].data_ptr() == weight.data_ptr()  # the same buffer
    assert torch.equal(second["model"]["0.weight"], model[0].weight)


def test_finite_weights_are_told_by_float64_sums():
    import torch

    from common.frameworks.torch_backend import sums_finite

    big = torch.full((1000,), 3e38)  # finite float32 values whose float32 sum overflows
    assert sums_finite([big, torch.zeros(3)]) and sums_finite([])
    for bad in (float("nan"), float("inf"), -float("inf")):
        t = torch.zeros(5)
        t[2] = bad
        assert not sums_finite([big, t])
    plus, minus = torch.tensor([float("inf")]), torch.tensor([-float("inf")])
    assert not sums_finite([plus, minus])  # their sum is NaN
