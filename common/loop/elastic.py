"""Elastic owns Horovod elastic for the one loop: the committed state, its rollback and re-sync.

Horovod's ``elastic.run`` re-runs a function after a worker fails (rolling back to the last
commit) or hosts change (continuing from the commit just made), once Horovod has re-formed the
world. :class:`ElasticState` is what is committed: the backend's model and optimizer
(``Backend.snapshot``) and the loop's position (``common.loop.state.LoopState``). It works
for every backend, since it only uses the ``Backend`` interface.

A worker that joins a running job starts the recipe from the top while the others re-form the
world, so it makes no collective before its first sync (``Trainer.restore(elastic=True)``: at a
job's start rank 0 alone reads the checkpoint, and its first sync hands it to every rank). Every
world change is a line and a ``world`` record: its size before and after, and why.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from horovod.common.elastic import State

from common.base.errors import AgreedError
from common.checkpoint.manager import CheckpointManager, Resume
from common.config.core import TrainConfig
from common.frameworks.backend import Backend
from common.loop.state import LoopState
from common.monitor.metrics import MetricSums
from common.monitor.output import Reporter
from common.world.runtime import Runtime


class ElasticLoop(Protocol):
    """What elastic mode needs of the loop (``common.loop.trainer.Trainer`` is one)."""

    backend: Backend
    checkpoint_manager: CheckpointManager
    state: LoopState
    rt: Runtime
    out: Reporter
    n_steps: int
    step_samples: int
    cfg: TrainConfig
    epoch_sums: MetricSums | None
    elastic_start: dict[str, Any] | None

    def enter_world(self) -> None: ...

    def continue_from(self, resume: Resume) -> None: ...


# What a world change is recorded as (``cause`` of the ``world`` record).
WORKER_FAILED = "a worker failed"
HOSTS_CHANGED = "hosts changed"


class ElasticState(State):
    """The loop's model, optimizer and position (``LoopState``), committed in host memory."""

    def __init__(self, loop: ElasticLoop) -> None:
        self.loop = loop
        backend = loop.backend
        super().__init__(bcast_object=lambda obj: backend.broadcast_object(obj, name="elastic"),
                         get_rank=lambda: backend.runtime().rank)
        self.synced = False  # whether this process has been through a sync (a joiner: not yet)
        self.cause = HOSTS_CHANGED  # why the world changes next
        self.save()

    def save(self) -> None:
        self._model = self.loop.backend.snapshot()
        self._position = self.loop.state.state_dict()

    def restore(self) -> None:
        """Back to the last commit (after a worker failed mid-way)."""
        self.loop.backend.load_state(self._model, "the last elastic commit")
        self.loop.state.load_state_dict(self._position)
        self.cause = WORKER_FAILED

    def reset(self) -> None:
        """Horovod has re-formed the world: rebuild what depends on it, say so in a line and a
        ``world`` record. The interrupted epoch's metrics restart (a lost rank's counters are
        gone)."""
        loop = self.loop
        before = loop.rt.size
        loop.epoch_sums = None
        self._rescale()
        s = loop.state
        loop.out.print(f"world changed: {loop.rt.size} worker(s) now ({self.cause}); resuming "
                       f"epoch {s.epoch + 1} from its last commit, LR target rescaled")
        loop.out.record("world", world_size=loop.rt.size, previous_world_size=before,
                        cause=self.cause, epoch=s.epoch + 1, step=s.step,
                        samples_done=s.samples_done)
        self.cause = HOSTS_CHANGED

    def sync(self) -> None:
        """Rank 0's model, optimizer and position on every rank, and on the job's first sync its
        restore (``Trainer.restore(elastic=True)``): an error there ends every rank together; a
        checkpoint's RNG streams and partial-epoch counters go to the ranks that wrote them. A
        worker that joins a running job gets its own RNG streams, seeded from the step."""
        loop = self.loop
        b = loop.backend
        start, loop.elastic_start = loop.elastic_start, None  # rank 0's, until its first sync
        got = b.broadcast_object({"position": loop.state.state_dict(), "start": start},
                                 name="elastic_position")
        error = (got["start"] or {}).get("error")
        if error:
            raise AgreedError(error, lambda: b.broadcast_object(None, name="elastic_error"))
        b.broadcast_state()
        if not self.synced and not loop.rt.is_root:
            if got["start"] is not None:  # the job's start: every rank takes its share
                loop.continue_from(loop.checkpoint_manager.resume(got["start"]["meta"], []))
            else:  # a worker joining a running job
                b.seed(loop.cfg.run.seed + JOIN_SEED_STRIDE * (got["position"]["step"] + 1)
                       + loop.rt.rank)
        self.synced = True
        loop.state.load_state_dict(got["position"])
        self._rescale()

    def _rescale(self) -> None:
        """Steps have the size of the current world: count the epoch's done samples in them."""
        loop, s = self.loop, self.loop.state
        loop.enter_world()
        s.step = s.epoch * loop.n_steps + s.samples_done // loop.step_samples


# A joining worker's RNG seed: the run's seed + this x (step + 1) + its rank (a checkpoint's
# world change seeds with another stride, per epoch; common.checkpoint.manager).
JOIN_SEED_STRIDE = 2_000_003


def train_elastic(loop: ElasticLoop, commit_steps: int,
                  train: Callable[[Callable[[bool], None]], None]) -> None:
    """Run ``train(commit)`` under Horovod elastic.

    ``commit(epoch_end)`` is called after every step and epoch; it commits every
    ``commit_steps`` steps and at each epoch end."""
    state = ElasticState(loop)

    def commit(epoch_end: bool) -> None:
        if epoch_end or loop.state.step % commit_steps == 0:
            state.commit()

    @loop.backend.elastic_run
    def run(state: ElasticState) -> None:
        train(commit)

    run(state)
