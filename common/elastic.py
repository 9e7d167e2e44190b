"""Elastic owns Horovod elastic for the one loop: the committed state, its rollback and re-sync.

Horovod's ``elastic.run`` re-runs a function after a worker fails (rolling back to the last
commit) or hosts change (continuing from the commit just made), once Horovod has re-formed the
world. :class:`LoopState` is what is committed: the backend's model and optimizer
(``Backend.snapshot``) and the loop's position (epoch, step, samples done in the epoch). It
works for every backend, since it only uses the ``Backend`` interface.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from horovod.common.elastic import State

if TYPE_CHECKING:
    from common.trainer import Trainer

_POSITION = ("epoch", "step", "start", "checkpoint", "checked_step")


def _position(t: Trainer) -> dict:
    return {**{k: getattr(t, k) for k in _POSITION}, "loss_reference": t.guard.reference}


def _set_position(t: Trainer, position: dict) -> None:
    for k in _POSITION:
        setattr(t, k, position[k])
    t.guard.reference = position["loss_reference"]


class LoopState(State):
    """The trainer's model, optimizer and position, committed in host memory."""

    def __init__(self, trainer: Trainer) -> None:
        self.trainer = trainer
        backend = trainer.backend
        super().__init__(bcast_object=lambda obj: backend.broadcast_object(obj, name="elastic"),
                         get_rank=lambda: backend.runtime().rank)
        self.save()

    def save(self) -> None:
        t = self.trainer
        self._model = t.backend.snapshot()
        self._position = _position(t)

    def restore(self) -> None:
        """Back to the last commit (after a worker failed mid-way)."""
        self.trainer.backend.load_state(self._model, "the last elastic commit")
        _set_position(self.trainer, self._position)

    def reset(self) -> None:
        """Horovod has re-formed the world: rebuild what depends on it. The interrupted
        epoch's metrics restart (a lost rank's counters are gone)."""
        self.trainer.epoch_sums = None
        self._rescale()

    def sync(self) -> None:
        """Rank 0's model, optimizer and position on every rank."""
        t = self.trainer
        t.backend.broadcast_state()
        _set_position(t, t.backend.broadcast_object(_position(t), name="elastic_position"))
        self._rescale()

    def _rescale(self) -> None:
        """Steps have the size of the current world: count the epoch's done samples in them."""
        t = self.trainer
        t.enter_world()
        t.step = t.epoch * t.n_steps + t.start // t.step_samples


def train_elastic(trainer: Trainer, commit_steps: int,
                  train: Callable[[Trainer, Callable[[bool], None]], None] | None = None) -> None:
    """Run ``train(trainer, commit)`` (default: ``Trainer.train``) under Horovod elastic.

    ``commit(epoch_end)`` is called after every step and epoch; it commits every
    ``commit_steps`` steps and at each epoch end."""
    state = LoopState(trainer)

    def commit(epoch_end: bool) -> None:
        if epoch_end or trainer.step % commit_steps == 0:
            state.commit()

    def on_reset() -> None:
        trainer.out.print(f"world changed: {trainer.rt.size} worker(s) now; resuming epoch "
                          f"{trainer.epoch + 1} from its last commit, LR target rescaled")

    state.register_reset_callbacks([on_reset])

    @trainer.backend.elastic_run
    def run(state: LoopState) -> None:
        if train is None:
            trainer.train(on_step=commit)
        else:
            train(trainer, commit)

    run(state)
