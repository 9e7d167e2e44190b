"""Helper job: the core's Keras callbacks on 2 ranks with uneven validation shards."""

import json
import os
import sys

os.environ["TF_USE_LEGACY_KERAS"] = "1"

from common import keras_callbacks as kc  # noqa: E402
from common import tf_backend as tfb  # noqa: E402
from common.config import TrainConfig  # noqa: E402
from common.failure import run_main  # noqa: E402


def main():
    rt = tfb.init(TrainConfig())
    # rank 0: 10 train / 3 val samples; rank 1: 10 train / 7 val samples
    val_n = 3 if rt.rank == 0 else 7
    logs = {"loss": 1.0 + rt.rank, "accuracy": 0.5 * rt.rank,
            "val_loss": 2.0 if rt.rank == 0 else 4.0, "val_accuracy": 1.0 if rt.rank == 0 else 0.0}
    kc.MetricAverage(train_samples=10, val_samples=val_n).on_epoch_end(0, logs)
    if rt.is_root:
        with open(sys.argv[1], "w") as f:
            json.dump({k: float(v) for k, v in logs.items()}, f)


if __name__ == "__main__":
    run_main(main)
