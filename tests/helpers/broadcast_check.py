"""Helper job: ranks seeded differently build the MNIST model, then the core broadcasts state."""

import json
import sys

import horovod.torch as hvd
import torch

from common.config.core import TrainConfig
from common.faults.ending import run_main
from common.frameworks.torch_backend import broadcast_state, distributed_optimizer, init
from recipes.pytorch.mnist import Net


def main():
    rt = init(TrainConfig.from_flags(seed=1234))
    torch.manual_seed(1000 + rt.rank)  # deliberately different initial weights per rank
    model = Net()
    opt = distributed_optimizer(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9),
                                model, TrainConfig())

    def gathered():
        flat = torch.cat([p.detach().flatten() for p in model.state_dict().values()])
        return hvd.allgather(flat.unsqueeze(0)).double()

    before = gathered()
    broadcast_state(model, opt)
    after = gathered()
    if rt.is_root:
        with open(sys.argv[1], "w") as f:
            json.dump({"before_equal": bool(torch.equal(before[0], before[1])),
                       "after_equal": bool(torch.equal(after[0], after[1])),
                       "after_max_diff": float((after[0] - after[1]).abs().max())}, f)


if __name__ == "__main__":
    run_main(main)
