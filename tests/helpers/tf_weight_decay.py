"""Three steps of a TensorFlow training path with --weight-decay (and --clip-grad-norm), as JSON.

Usage: [horovodrun -np N] python tests/helpers/tf_weight_decay.py custom|keras|tf-keras MOMENTUM
       WEIGHT_DECAY [CLIP [fp16|adasum]]

A Dense(3) layer on 8 fixed samples of 4 features and SGD at LR 0.1; on N workers rank r takes
samples r, r+N, ... (each step's global batch is the 8). With CLIP (0: none), --clip-grad-norm
CLIP; ``fp16``: --fp16-allreduce, ``adasum``: --use-adasum.
``custom``: the custom loop's step (``TFBackend.train_step``: Horovod's tape, then the clip and
the L2 term) with Keras 3 SGD. ``keras``: ``model.fit`` on Keras 3 with the core's
``keras_optimizer.distributed_optimizer``; ``tf-keras``: the same on tf-keras
(``TF_USE_LEGACY_KERAS=1``), Horovod's Keras optimizer inside. Prints the initial and the
trained kernel and bias, so that a test can replay the steps with ``torch.optim.SGD``
(TensorFlow stays out of the test process).
"""

from __future__ import annotations

import json
import os
import sys

path, momentum, weight_decay = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
clip = float(sys.argv[4]) if len(sys.argv) > 4 and float(sys.argv[4]) else None
option = sys.argv[5] if len(sys.argv) > 5 else ""
if path == "tf-keras":
    os.environ["TF_USE_LEGACY_KERAS"] = "1"  # the switch, before TensorFlow is imported

import numpy as np  # noqa: E402

from common.config.core import TrainConfig  # noqa: E402
from common.data.datasets import ArrayDataset  # noqa: E402
from common.frameworks.tf_backend import TFBackend, init, tf  # noqa: E402

keras = tf.keras
cfg = TrainConfig.from_flags(batch_size=8, momentum=momentum, weight_decay=weight_decay,
                             clip_grad_norm=clip, fp16_allreduce=option == "fp16",
                             use_adasum=option == "adasum")
rt = init(cfg)
rng = np.random.default_rng(0)
x_all = rng.random((8, 4), dtype=np.float32)
y_all = rng.integers(0, 3, 8)
x, y = x_all[rt.rank::rt.size], y_all[rt.rank::rt.size]  # this worker's share of each step
model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
start = [w.numpy().tolist() for w in model.weights]
optimizer = keras.optimizers.SGD(0.1, momentum=momentum)
loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
if path in ("keras", "tf-keras"):
    from common.frameworks.keras_optimizer import distributed_optimizer

    model.compile(optimizer=distributed_optimizer(optimizer, cfg), loss=loss_fn)
    model.fit(x, y, batch_size=len(y), epochs=3, shuffle=False, verbose=0)
    norms = model.optimizer.grad_norms.read() if clip else {}
else:
    backend = TFBackend(rt, cfg, model, optimizer, loss_fn, ArrayDataset(x, y, "fixed"),
                        ArrayDataset(x, y, "fixed"))
    for _ in range(3):
        backend.train_step((tf.constant(x), tf.constant(y)))
    norms = backend.epoch_stats()
if rt.rank == 0:
    print(json.dumps({"x": x_all.tolist(), "y": y_all.tolist(), "start": start, "norms": norms,
                      "end": [w.numpy().tolist() for w in model.weights]}))
