"""Run the parameter-server recipe with one worker slowed down (for the staleness tests).

    mpirun -np N python tests/helpers/slow_worker.py RANK SECONDS [recipe flags...]

Worker RANK sleeps SECONDS before each of its train steps, so the others run ahead of it as far
as --max-staleness lets them."""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

from common.faults.ending import run_main  # noqa: E402
from common.strategies.param_server import ParameterServerBackend  # noqa: E402
from recipes.pytorch import parameter_server  # noqa: E402

SLOW_RANK, DELAY = int(sys.argv[1]), float(sys.argv[2])
_step = ParameterServerBackend._worker_step


def slow_step(self, batch):
    if self.runtime().rank == SLOW_RANK:
        time.sleep(DELAY)
    return _step(self, batch)


ParameterServerBackend._worker_step = slow_step

if __name__ == "__main__":
    run_main(lambda: parameter_server.main(sys.argv[3:]))
