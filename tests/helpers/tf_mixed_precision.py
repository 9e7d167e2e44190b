"""Train the TF MNIST model a few steps under a Keras mixed precision policy, forced on CPU.

Usage: python tests/helpers/tf_mixed_precision.py {mixed_bfloat16|mixed_float16} STEPS

``--amp`` picks the policy only on a GPU (common.frameworks.tf_backend.mixed_precision_policy); this runs
the core's train step under the policy it would pick, on whatever device there is, and prints
JSON: the optimizer's class, the weights' dtypes, the layers' compute dtype and each step's loss.
"""

from __future__ import annotations

import json
import sys

from common.config.core import TrainConfig
from common.data.datasets import load_digits_split
from common.frameworks.tf_backend import TFBackend, init, tf
from common.monitor.metrics import MetricSums
from recipes.tensorflow.mnist import build_model


def main() -> None:
    policy, steps = sys.argv[1], int(sys.argv[2])
    cfg = TrainConfig.from_flags(batch_size=32, amp=True, stall_timeout=0.0)
    rt = init(cfg)
    tf.keras.mixed_precision.set_global_policy(policy)
    train, val = (d.with_channel() for d in load_digits_split())
    model = build_model(train.inputs.shape[1])
    optimizer = tf.keras.optimizers.SGD(0.05, momentum=0.9)
    loss_fn = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    backend = TFBackend(rt, cfg, model, optimizer, loss_fn, train, val, num_classes=10)
    losses = []
    for _, batch in zip(range(steps), backend.train_batches(0, 0), strict=False):
        sums = MetricSums(backend.train_layout, backend.read_counters(backend.train_step(batch)))
        losses.append(sums.loss)
    print(json.dumps({"optimizer": type(backend.optimizer).__name__,
                      "weight_dtypes": sorted({str(v.dtype) for v in model.trainable_weights}),
                      "compute_dtype": model.layers[0].compute_dtype, "losses": losses,
                      "notices": backend.notices}))


if __name__ == "__main__":
    main()
