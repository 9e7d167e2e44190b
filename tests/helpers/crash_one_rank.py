"""Helper job: rank 1 raises while rank 0 waits in allreduces; the job must end, not hang."""

import time

import numpy as np

from common import torch_backend as tb
from common.config import TrainConfig
from common.failure import run_main


def main():
    rt, _ = tb.init(TrainConfig())
    if rt.rank == 1:
        time.sleep(1)
        raise RuntimeError("rank 1 fails on purpose")
    while True:  # rank 0 would wait here forever if the launcher did not stop the job
        tb.allreduce_sum(np.ones(3))


if __name__ == "__main__":
    run_main(main)
