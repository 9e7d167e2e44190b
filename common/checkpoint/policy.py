"""Policy owns when a checkpoint is written: every N epochs or steps, at the end, when a run stops early.

It is the one place for a new rule (every N minutes, say); every loop and callback asks it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from common.config.core import TrainConfig


@dataclass(frozen=True)
class SavePolicy:
    """When to write a checkpoint; every loop and callback asks this one object.

    Decisions depend only on values every rank shares (step and epoch counts), so all ranks
    reach the same answer without talking; a rule on local facts (wall-clock time) must first
    be agreed, e.g. by broadcasting rank 0's decision, before the collective save.
    """

    every_epochs: int = 1
    every_steps: int = 0
    epochs: int = 1

    @classmethod
    def from_config(cls, cfg: TrainConfig) -> SavePolicy:
        return cls(cfg.checkpoint.checkpoint_epochs, cfg.checkpoint.checkpoint_steps,
                   cfg.run.epochs)

    def should_save(self, step: int, epochs_done: int, epoch_complete: bool,
                    stopping: bool = False) -> bool:
        """After optimizer step ``step``: save? ``epochs_done`` counts full epochs so far."""
        if stopping:
            return True  # a run cut short keeps what it did
        if epoch_complete and (epochs_done >= self.epochs or (
                self.every_epochs and epochs_done % self.every_epochs == 0)):
            return True
        return bool(self.every_steps) and step % self.every_steps == 0
