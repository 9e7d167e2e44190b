"""The PyTorch backend's TensorBoard writer: the scalars land, and TensorFlow stays out."""

from __future__ import annotations

import sys

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
