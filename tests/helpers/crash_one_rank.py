"""Helper job: rank 1 raises while rank 0 waits in allreduces; the job must end, not hang."""

import time

import numpy as np

from common.config.core import TrainConfig
from common.faults.ending import run_main
from common.frameworks.torch_backend import allreduce_sum, init


def main():
    rt = init(TrainConfig())
    if rt.rank == 1:
        time.sleep(1)
        raise RuntimeError("rank 1 fails on purpose")
    while True:  # rank 0 would wait here forever if the launcher did not stop the job
        allreduce_sum(np.ones(3))


if __name__ == "__main__":
    run_main(main)
