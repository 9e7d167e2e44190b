"""Elastic owns Horovod elastic for the one loop: the committed state, its rollback and re-sync.

Horovod's ``elastic.run`` re-runs a function after a worker fails (rolling back to the last
commit) or hosts change (continuing from the commit just made), once Horovod has re-formed the
world. :class:`ElasticState` is what is committed: the backend's model and optimizer
(``Backend.snapshot``) and the loop's position (``common.loop.state.LoopState``). It works
for every backend, since it only uses the ``Backend`` interface.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from horovod.common.elastic import State

from common.frameworks.backend import Backend
from common.loop.state import LoopState
from common.monitor.metrics import MetricSums
from common.monitor.output import Reporter
from common.world.runtime import Runtime


class ElasticLoop(Protocol):
    """What elastic mode needs of the loop (``common.loop.trainer.Trainer`` is one)."""

    backend: Backend
    state: LoopState
    rt: Runtime
    out: Reporter
    n_steps: int
    step_samples: int
    epoch_sums: MetricSums | None

    def enter_world(self) -> None: ...


class ElasticState(State):
    """The loop's model, optimizer and position (``LoopState``), committed in host memory."""

    def __init__(self, loop: ElasticLoop) -> None:
        self.loop = loop
        backend = loop.backend
        super().__init__(bcast_object=lambda obj: backend.broadcast_object(obj, name="elastic"),
                         get_rank=lambda: backend.runtime().rank)
        self.save()

    def save(self) -> None:
        self._model = self.loop.backend.snapshot()
        self._position = self.loop.state.state_dict()

    def restore(self) -> None:
        """Back to the last commit (after a worker failed mid-way)."""
        self.loop.backend.load_state(self._model, "the last elastic commit")
        self.loop.state.load_state_dict(self._position)

    def reset(self) -> None:
        """Horovod has re-formed the world: rebuild what depends on it. The interrupted
        epoch's metrics restart (a lost rank's counters are gone)."""
        self.loop.epoch_sums = None
        self._rescale()

    def sync(self) -> None:
        """Rank 0's model, optimizer and position on every rank."""
        loop = self.loop
        loop.backend.broadcast_state()
        loop.state.load_state_dict(loop.backend.broadcast_object(loop.state.state_dict(),
                                                                 name="elastic_position"))
        self._rescale()

    def _rescale(self) -> None:
        """Steps have the size of the current world: count the epoch's done samples in them."""
        loop, s = self.loop, self.loop.state
        loop.enter_world()
        s.step = s.epoch * loop.n_steps + s.samples_done // loop.step_samples


def train_elastic(loop: ElasticLoop, commit_steps: int,
                  train: Callable[[Callable[[bool], None]], None]) -> None:
    """Run ``train(commit)`` under Horovod elastic.

    ``commit(epoch_end)`` is called after every step and epoch; it commits every
    ``commit_steps`` steps and at each epoch end."""
    state = ElasticState(loop)

    def commit(epoch_end: bool) -> None:
        if epoch_end or loop.state.step % commit_steps == 0:
            state.commit()

    def on_reset() -> None:
        loop.out.print(f"world changed: {loop.rt.size} worker(s) now; resuming epoch "
                       f"{loop.state.epoch + 1} from its last commit, LR target rescaled")

    state.register_reset_callbacks([on_reset])

    @loop.backend.elastic_run
    def run(state: ElasticState) -> None:
        train(commit)

    run(state)
