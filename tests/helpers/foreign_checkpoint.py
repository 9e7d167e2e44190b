"""Helper job: writes a checkpoint under the MNIST recipe's name but of a different model."""

import sys

import torch
import torch.nn.functional as F

from common.checkpoint.manager import CheckpointManager
from common.config.core import TrainConfig
from common.faults.ending import run_main
from common.frameworks.torch_backend import TorchBackend, init
from common.loop.state import LoopState
from recipes.pytorch.mnist import RECIPE


def main():
    cfg = TrainConfig.from_flags(checkpoint_dir=sys.argv[1])
    rt = init(cfg)
    model = torch.nn.Linear(64, 10)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=cfg.optimizer.momentum)
    data = torch.utils.data.TensorDataset(torch.zeros(4, 64), torch.zeros(4, dtype=torch.long))
    backend = TorchBackend(rt, cfg, model, opt, F.cross_entropy, data, data)
    CheckpointManager(backend, cfg, RECIPE).save(LoopState(epoch=1, step=10).state_dict())


if __name__ == "__main__":
    run_main(main)
