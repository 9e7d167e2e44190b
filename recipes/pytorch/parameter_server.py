"""Parameter-server recipe (PyTorch): the MNIST CNN, its parameters sharded over server ranks, sync or async.

Run on 3 processes, 2 workers and 1 server, synchronous:
    horovodrun -np 3 python recipes/pytorch/parameter_server.py --servers 1 --mode sync
Asynchronous, 2 servers, workers at most 2 steps apart:
    mpirun -np 4 -bind-to none -map-by slot -x PATH python recipes/pytorch/parameter_server.py \
        --servers 2 --mode async --max-staleness 2

The last --servers ranks hold the parameters, each a share of the tensors, and apply the
optimizer; the other ranks are workers that pull the parameters, compute the gradient of their
shard of the data and push it back. Sync mode trains exactly what synchronous data parallelism
trains; async mode applies each push on arrival and reports the staleness it saw. The model,
data and hyper-parameters are the MNIST recipe's; the same loop, schedule, checkpoints and
metrics run it (common/strategies/param_server.py). Needs an MPI launch (not horovodrun --gloo).
"""

from __future__ import annotations

from common.config import parse_config
from common.config.strategies import ServerConfig
from common.faults.ending import run_main
from common.loop.trainer import fit
from common.strategies.param_server import ParameterServerBackend, init_param_server

import torch
import torch.nn.functional as F

from recipes.pytorch import models
from recipes.shared import mnist_parser

RECIPE = "pytorch/parameter_server"


def main(argv: list[str] | None = None) -> None:
    parser = mnist_parser(__doc__.splitlines()[0], RECIPE)
    ServerConfig.add_flags(parser)  # distributed: --servers, --mode, --max-staleness
    models.add_flags(parser)  # --model cnn|resnet18, --synthetic N
    cfg, args = parse_config(parser, argv)
    sc = ServerConfig.from_args(args, cfg)
    rt, roles, comm = init_param_server(cfg, sc)  # distributed: MPI, roles
    model, train_set, val_set, data_name = models.build(args, cfg)

    def sgd(params: list) -> torch.optim.Optimizer:
        return torch.optim.SGD(params, lr=cfg.schedule.base_lr, momentum=cfg.optimizer.momentum,
                               weight_decay=cfg.optimizer.weight_decay)

    backend = ParameterServerBackend(rt, cfg, sc, roles, comm, model, sgd,  # distributed
                                     F.cross_entropy, train_set, val_set,
                                     num_classes=10)
    fit(backend, cfg, RECIPE, vars(args), f" ({data_name}, {args.model}; {backend.describe()})")


if __name__ == "__main__":
    run_main(main)
