"""Elastic Keras MNIST recipe (TensorFlow, tf-keras ``model.fit``): survives workers that leave or join.

Run:  horovodrun -np 4 --min-np 2 --max-np 8 --host-discovery-script ./discover_hosts.sh \
          python recipes/tensorflow/elastic_keras_mnist.py

The same recipe as recipes/tensorflow/keras_mnist.py, with ``model.fit`` under the core's
elastic mode (common/loop/elastic.py): weights, optimizer state and the run's position are
committed every --commit-steps steps and at each epoch end. After a worker fails or hosts
change, the survivors roll back to the last commit and fit again on the new world: LR target
rescaled, data re-sharded, exact metric averaging over the new ranks. The interrupted epoch
restarts from its beginning with the committed weights.
"""

from __future__ import annotations

import os

os.environ["TF_USE_LEGACY_KERAS"] = "1"  # before TensorFlow is imported

from common.config import ConfigError, parse_config  # noqa: E402
from common.config.strategies import ElasticConfig  # noqa: E402
from common.faults.ending import run_main  # noqa: E402
from common.frameworks.tf_backend import init  # noqa: E402
from common.loop.keras_fit import fit  # noqa: E402
from recipes.shared import mnist_parser  # noqa: E402
from recipes.tensorflow.keras_mnist import build  # noqa: E402

RECIPE = "tensorflow/elastic_keras_mnist"


def main(argv: list[str] | None = None) -> None:
    parser = mnist_parser(__doc__.splitlines()[0], RECIPE)
    ElasticConfig.add_flags(parser)  # distributed: --commit-steps
    cfg, args = parse_config(parser, argv)
    elastic = ElasticConfig.from_args(args)  # distributed
    if cfg.gradients.batches_per_allreduce != 1:
        raise ConfigError("--batches-per-allreduce must be 1 here")
    rt = init(cfg)  # distributed: hvd.init, threads and GPU per rank
    backend, describe = build(cfg, rt)
    fit(backend, cfg, RECIPE, vars(args), describe, elastic=elastic)  # distributed: elastic mode


if __name__ == "__main__":
    run_main(main)
