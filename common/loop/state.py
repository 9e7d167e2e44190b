"""Loop state owns the loop's position: epochs and steps done, samples into the epoch, LR factor, rollbacks.

One object, saved and loaded as a whole (:meth:`LoopState.state_dict`), by the elastic commit
(``common.loop.elastic``); the checkpoint protocol writes its epoch, step and LR factor, and the
Keras callback moves it step by step, as the custom loops do.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any


@dataclass
class LoopState:
    """Where training stands; the same on every rank."""

    epoch: int = 0  # full epochs done
    step: int = 0  # optimizer steps done, counted in the current world's steps
    samples_done: int = 0  # samples of the current epoch's global order already trained
    checkpoint: str | None = None  # the newest checkpoint written or resumed from
    checked_step: int = 0  # the last step whose loss the divergence guard found sound
    lr_factor: float = 1.0  # what rollbacks (--on-divergence rollback) left of the LR
    rollbacks: int = 0
    loss_reference: float | None = None  # the mean loss of the run's first step, over all ranks

    def state_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for f in dataclasses.fields(self):
            setattr(self, f.name, state[f.name])
