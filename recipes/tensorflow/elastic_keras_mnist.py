"""Elastic Keras MNIST recipe (TensorFlow, Keras 3 ``model.fit``): survives workers that leave or join.

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

from common.config import ConfigError, parse_config
from common.config.strategies import ElasticConfig
from common.faults.ending import run_main
from common.frameworks.tf_backend import init
from common.loop.keras_fit import fit

from recipes.shared import mnist_parser
from recipes.tensorflow.keras_mnist import build

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
