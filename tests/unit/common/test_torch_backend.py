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
