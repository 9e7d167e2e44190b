"""Hybrid-parallel recipe (PyTorch): the MNIST CNN cut into S pipeline stages, replicated R times.

Run on 4 workers, 2 stages x 2 replicas, 4 micro-batches:
    horovodrun -np 4 python recipes/pytorch/hybrid_parallel.py --stages 2 --micro-batches 4
    mpirun -np 4 -bind-to none -map-by slot -x PATH python recipes/pytorch/hybrid_parallel.py --stages 2
Pure model parallelism (2 stages, no replicas):
    horovodrun -np 2 python recipes/pytorch/hybrid_parallel.py --stages 2

Model parallelism: each rank holds some consecutive layers of the network (a stage) and passes
activations forward and their gradients back to its neighbours (point to point, mpi4py).
Data parallelism: R copies of the pipeline train on R shards of the data, and each stage's
gradients are averaged over its R copies by Horovod on that stage's process set. The model,
data and hyper-parameters are the MNIST recipe's; the same loop, schedule, checkpoints and
metrics run it (common/strategies/pipeline.py). Needs an MPI launch (not horovodrun --gloo).
"""

from __future__ import annotations

from common.config import parse_config
from common.config.strategies import PipelineConfig
from common.faults.ending import run_main
from common.loop.trainer import fit
from common.strategies.pipeline import PipelineBackend, init_pipeline

import torch
import torch.nn.functional as F

from recipes.pytorch import models
from recipes.shared import mnist_parser

RECIPE = "pytorch/hybrid_parallel"


def main(argv: list[str] | None = None) -> None:
    parser = mnist_parser(__doc__.splitlines()[0], RECIPE)
    PipelineConfig.add_flags(parser)  # distributed: --stages, --replicas, --micro-batches
    models.add_flags(parser)  # --model cnn|resnet18, --synthetic N
    cfg, args = parse_config(parser, argv)
    pc = PipelineConfig.from_args(args, cfg)
    rt, layout, stage_set, comm = init_pipeline(cfg, pc)  # distributed: MPI, process sets
    model, train_set, val_set, data_name = models.build(args, cfg)

    def sgd(params: list) -> torch.optim.Optimizer:
        return torch.optim.SGD(params, lr=cfg.schedule.base_lr, momentum=cfg.optimizer.momentum,
                               weight_decay=cfg.optimizer.weight_decay)

    backend = PipelineBackend(rt, cfg, pc, layout, stage_set, comm, model, sgd,  # distributed
                              F.cross_entropy, train_set, val_set,
                              num_classes=10)
    fit(backend, cfg, RECIPE, vars(args), f" ({data_name}, {args.model}; {backend.describe()})")


if __name__ == "__main__":
    run_main(main)
