"""Helper job: writes a checkpoint under the MNIST recipe's name but of a different model."""

import sys

import torch

from common import torch_backend as tb
from common.config import TrainConfig
from common.failure import run_main
from recipes.pytorch.mnist import RECIPE


def main():
    cfg = TrainConfig(checkpoint_dir=sys.argv[1])
    rt, _ = tb.init(cfg)
    model = torch.nn.Linear(64, 10)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    tb.Checkpointer(rt, cfg, RECIPE, model, opt).save(tb.Progress(1, 10))


if __name__ == "__main__":
    run_main(main)
