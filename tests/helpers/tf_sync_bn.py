"""Three steps of a small Keras 3 CNN with batch norm in the TF custom loop, as JSON.

Usage: [mpirun -np N] python tests/helpers/tf_sync_bn.py SYNC_BN(0|1) [keras]

A Conv2D, BatchNormalization, Dense model on 8 fixed 6x6 images, SGD at LR 0.1 without
momentum; on N workers rank r takes samples r, r+N, ... (each step's global batch is the 8).
With SYNC_BN 1, ``--sync-bn``. ``keras``: ``model.fit`` with the core's distributed Keras
optimizer instead of the custom loop's step. Rank 0 prints every weight and the moving
statistics after the steps.
"""

from __future__ import annotations

import json
import sys

import numpy as np

from common.config.core import TrainConfig
from common.data.datasets import ArrayDataset
from common.frameworks.tf_backend import TFBackend, init, tf

sync, fit = sys.argv[1] == "1", "keras" in sys.argv[2:]
keras = tf.keras
cfg = TrainConfig.from_flags(batch_size=8, momentum=0.0, sync_bn=sync)
rt = init(cfg)
rng = np.random.default_rng(0)
x_all = rng.normal(size=(8, 6, 6, 2)).astype(np.float32) * np.array([1.0, 3.0], np.float32) + 0.5
y_all = rng.integers(0, 3, 8)
x, y = x_all[rt.rank::rt.size], y_all[rt.rank::rt.size]  # this worker's share of each step
tf.random.set_seed(1)
model = keras.Sequential([keras.Input((6, 6, 2)), keras.layers.Conv2D(4, 3),
                          keras.layers.BatchNormalization(momentum=0.5), keras.layers.ReLU(),
                          keras.layers.Flatten(), keras.layers.Dense(3)])
loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
data = ArrayDataset(x, y, "fixed")
if fit:
    from common.loop.keras_fit import compiled_backend, sgd

    model.compile(optimizer=sgd(cfg), loss=loss_fn)
    backend = compiled_backend(rt, cfg, model, data, data)
    backend.optimizer.learning_rate.assign(0.1)
    model.fit(x, y, batch_size=len(y), epochs=3, shuffle=False, verbose=0)
else:
    backend = TFBackend(rt, cfg, model, keras.optimizers.SGD(0.1), loss_fn, data, data)
    for _ in range(3):
        backend.train_step((tf.constant(x), tf.constant(y)))
if rt.rank == 0:
    print(json.dumps({"weights": [w.numpy().tolist() for w in model.weights],
                      "names": [w.path for w in model.weights]}))
