"""Elastic MNIST recipe (PyTorch): the MNIST CNN under Horovod elastic, surviving workers that leave or join.

Run (hosts come and go as discover_hosts.sh prints them):
    horovodrun -np 4 --min-np 2 --max-np 8 --host-discovery-script ./discover_hosts.sh \
        python recipes/pytorch/elastic_mnist.py

The same recipe as recipes/pytorch/mnist.py, trained by the same loop in elastic mode
(common/loop/elastic.py): the model, optimizer and the loop's position are committed every
--commit-steps steps and at each epoch end. When a worker fails or hosts change, the surviving
workers roll back to the last commit, the epoch's remaining samples are re-sharded over the new
world, and the LR target is rescaled to the new world size. Rank 0 also writes the core's
checkpoints, so a job stopped whole resumes from them.
"""

from __future__ import annotations

from common.config import parse_config
from common.config.strategies import ElasticConfig
from common.faults.ending import run_main
from common.frameworks.torch_backend import init
from common.loop.trainer import fit

from recipes.pytorch.mnist import build
from recipes.shared import mnist_parser

RECIPE = "pytorch/elastic_mnist"


def main(argv: list[str] | None = None) -> None:
    parser = mnist_parser(__doc__.splitlines()[0], RECIPE)
    ElasticConfig.add_flags(parser)  # distributed: --commit-steps
    cfg, args = parse_config(parser, argv)
    elastic = ElasticConfig.from_args(args)  # distributed
    rt = init(cfg)  # distributed: hvd.init, threads and device per rank
    backend, describe = build(cfg, rt)
    fit(backend, cfg, RECIPE, vars(args), describe, elastic=elastic)  # distributed: elastic mode


if __name__ == "__main__":
    run_main(main)
