"""Print what a run wrote for TensorBoard, as JSON: {"scalars"|"tensors": {tag: [[step, value], ...]}}.

Usage: python tests/helpers/tensorboard_scalars.py LOG_DIR

Run in a process of its own: a test process that has TensorFlow and then imports torchvision
can crash; TensorBoard's reader is kept from importing TensorFlow too (6 s saved:
``common.monitor.output.tensorboard_without_tensorflow``). Summaries written as scalars
(PyTorch's SummaryWriter) and as tensors (tf.summary) both come out as numbers, each under its
own kind.
"""

from __future__ import annotations

import json
import sys

from common.monitor.output import tensorboard_without_tensorflow

tensorboard_without_tensorflow()  # before TensorBoard loads

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402
from tensorboard.util.tensor_util import make_ndarray  # noqa: E402

events = EventAccumulator(sys.argv[1], size_guidance={"tensors": 0, "scalars": 0})
events.Reload()
tags = events.Tags()
print(json.dumps({
    "scalars": {tag: [[e.step, e.value] for e in events.Scalars(tag)] for tag in tags["scalars"]},
    "tensors": {tag: [[e.step, float(make_ndarray(e.tensor_proto))] for e in events.Tensors(tag)]
                for tag in tags["tensors"]},
}))
