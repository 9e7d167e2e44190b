"""Trainer owns the one training loop of every framework and recipe: epochs, steps, resume, stopping.

A recipe builds its model, optimizer and data, wraps them in its framework's backend
(``TorchBackend`` or ``TFBackend``, see ``common.frameworks.backend``) and calls :func:`fit`. Around the
single-process loop, everything a distributed run adds happens here once, for both frameworks:

* the checkpoint manager restores the newest checkpoint on every rank (model, optimizer,
  step, RNG streams, the partial epoch's metric counters);
* each step sets the LR from the one ``LRSchedule`` and runs the backend's train step (gradient
  accumulation, mixed precision, Horovod's allreduce); metric counters stay on the device;
* the ``SavePolicy`` decides after each step and epoch whether to checkpoint;
* each epoch reduces exact global metrics, validates on every rank's shard, and prints one line,
  writes one JSON record and TensorBoard scalars from rank 0.
* before each save and at each epoch end the ``DivergenceGuard`` checks the global loss and the
  weights: the job stops on every rank together, or (``--on-divergence rollback``) every rank
  reloads the last sound checkpoint and goes on with a lower LR; stop signals are agreed after
  every step, or every few short ones (``common.faults.preemption``), and the stall watchdog
  runs beside it all (``common.faults.watchdog``).

Elastic mode (``fit(..., elastic=ElasticConfig(...))``) runs the same loop under Horovod's
``elastic.run``: the loop's position (epoch, step, samples done in the epoch) and the model and
optimizer are committed every ``--commit-steps`` steps and at each epoch end; after a world
change the epoch's remaining samples are re-sharded over the new world and the LR target is
rescaled. An epoch interrupted by a world change reports the metrics of its steps since then.

Uneven data: training shards drop the permutation's tail so every rank takes the same number of
steps (no ``hvd.join`` needed); validation keeps every sample and reduces sums once.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from common.base.errors import AgreedError, UserError, agree
from common.base.launch_dir import restart
from common.checkpoint.manager import CheckpointManager, Resume
from common.config.core import TrainConfig
from common.config.flags import ConfigError
from common.config.strategies import ElasticConfig
from common.faults.divergence import DivergenceGuard
from common.faults.preemption import Preempted, SignalWatch
from common.faults.watchdog import StallWatchdog, beat
from common.faults.watchdog import active as stall_watchdog
from common.frameworks.backend import Backend
from common.loop.elastic import train_elastic
from common.loop.schedule import LRSchedule
from common.loop.state import LoopState
from common.monitor import profiling
from common.monitor.balance import EpochTimes, rank_times, summarize
from common.monitor.fold_summary import report_folds
from common.monitor.metrics import MetricSums, Throughput
from common.monitor.output import Reporter
from common.monitor.tracking import MlflowTracker, tracker_for

# How often a progress bar reads the running loss back from the device.
_BAR_REFRESH_S = 0.5


def seconds_since_start() -> float | None:
    """Seconds since this process started (imports and Horovod's start included), or None."""
    try:
        import psutil  # Horovod's own dependency

        return time.time() - psutil.Process().create_time()
    except Exception:  # noqa: BLE001 - a missing number, never a failed run
        return None


# What a stopping or failing run waits for its tracker: a stop signal's grace period is short.
STOP_FLUSH_S = 10.0


class Rollback(Exception):
    """Training diverged and ``--on-divergence rollback`` allows another try (every rank)."""


class Trainer:
    """The loop's state (epoch, step, position in the epoch) and the components it calls."""

    def __init__(self, backend: Backend, cfg: TrainConfig, recipe: str,
                 recipe_args: dict[str, Any] | None = None, describe: str = "") -> None:
        self.backend, self.cfg, self.recipe = backend, cfg, recipe
        self.recipe_args, self.describe = recipe_args, describe
        self.checkpoint_manager = CheckpointManager(backend, cfg, recipe)
        self.policy = self.checkpoint_manager.policy
        self.state = LoopState()  # where training stands (epoch, step, ...), the same on every rank
        self.epoch_sums: MetricSums | None = None  # this rank's counters of a resumed epoch
        self.train_sums = MetricSums(backend.train_layout)
        self.val_sums = MetricSums(backend.val_layout)
        self.samples_per_sec = 0.0
        self.trained = False
        self.first_step = 0  # the step this run started from
        # Elastic mode: rank 0's restore, until its first elastic sync hands it to every rank.
        self.elastic_start: dict[str, Any] | None = None
        self.guard = DivergenceGuard(cfg.run.divergence_factor)
        self.signals = SignalWatch(cfg.run.stop_signals)
        self.wall_clock = Throughput()
        self.progress_clock = Throughput()  # since the last progress line
        self.epochs_run = 0  # epochs this process trained (the first includes start-up)
        self.save_pauses: list[float] = []  # seconds each checkpoint held this rank's loop
        self.timeline: str | None = None  # Horovod's timeline file (--timeline-out), once started
        self.tracker: MlflowTracker | None = None  # rank 0's (--tracker), made by enter_world
        self.enter_world()

    def enter_world(self) -> None:
        """(Re)build what depends on the world: rank, steps per epoch, LR target, reporter."""
        b = self.backend
        self.rt = b.runtime()
        self.n_steps = b.steps_per_epoch()
        if self.n_steps < 1:
            raise UserError(f"{b.n_train} training samples are too few for "
                            f"{b.data_parallel()[1]} replica(s) x {b.samples_per_step} samples "
                            "per step")
        # The LR scales with the replicas: the workers that average their gradients.
        self.schedule = LRSchedule.from_config(self.cfg, b.data_parallel()[1], self.n_steps,
                                               b.adasum_local_size)
        self.checkpoint_manager.steps_per_epoch = self.n_steps
        self.signals.reset()  # every rank of the new world agrees on signals at the next step
        if getattr(self, "out", None) is not None:
            self.out.close()  # rank 0 may be another process now
        if self.rt.is_root and self.tracker is None:
            self.tracker = tracker_for(self.cfg.output, self.cfg.checkpoint.checkpoint_dir,
                                       self.recipe, lambda line: self.out.print(line))
        self.out = Reporter(self.rt.is_root, self.cfg.output, b.scalar_writer, self.tracker)

    @contextlib.contextmanager
    def running(self, elastic: bool = False) -> Iterator[None]:
        """Around everything that follows construction: stop signals become requests, and the
        stall watchdog (a collective to start; not in elastic mode, where Horovod itself drops a
        worker that stops answering) watches every rank's progress."""
        if elastic and self.cfg.run.on_divergence == "rollback":
            raise ConfigError("--on-divergence rollback does not work with elastic recipes "
                              "(their rollback point is the elastic commit); use stop")
        if elastic and self.cfg.profiling.timeline_out:
            raise ConfigError("--timeline-out does not work with elastic recipes: Horovod restarts "
                              "at every change of the world, and its timeline with it")
        self.timeline = profiling.start(getattr(self.backend, "hvd", None), self.cfg.profiling,
                                        self.rt.is_root, self.backend.broadcast_object)
        watchdog = None
        if self.cfg.run.stall_timeout and not elastic:
            # started in its start-up mode by the backend's init, or (a second fit) anew
            watchdog = stall_watchdog() or StallWatchdog(
                self.cfg.run.stall_timeout, self.rt.rank, self.rt.size).start(
                    self.backend.allgather_object)
            watchdog.training()
        try:
            with self.signals:
                yield
        finally:
            if watchdog is not None:
                watchdog.close()

    def lr(self, step: int) -> float:
        """The LR of ``step``: the schedule's, times what rollbacks left of it."""
        return self.schedule(step) * self.state.lr_factor

    def _restore_position(self, max_step: int | None = None, elastic: bool = False) -> Resume:
        """Load the newest checkpoint (of ``max_step`` or earlier) on every rank (a collective)
        and continue from it. ``elastic``: rank 0 alone reads it, no collective (``restore``)."""
        if elastic:
            error, meta, notices = self.checkpoint_manager.read()
            self.elastic_start = {"error": error, "meta": meta}
            resume = self.checkpoint_manager.resume(meta, notices)
        else:
            resume = self.checkpoint_manager.restore(max_step)
        self.continue_from(resume)
        return resume

    def continue_from(self, resume: Resume) -> None:
        """Take the loop's position and this rank's partial-epoch counters from ``resume``."""
        s = self.state
        s.epoch, s.step, s.checkpoint = resume.epoch, resume.step, resume.checkpoint
        self.signals.reset()
        s.checked_step = s.step
        s.samples_done = (s.step - s.epoch * self.n_steps) * self.step_samples
        self.epoch_sums = None
        if resume.epoch_sums is not None and s.samples_done:
            self.epoch_sums = MetricSums(self.backend.train_layout, resume.epoch_sums)
        if s.checkpoint:
            self.out.resumed(s.epoch)

    @property
    def total_steps(self) -> int:
        """The run's last step: every epoch, or ``--max-steps`` if fewer."""
        total = self.cfg.run.epochs * self.n_steps
        return min(total, self.cfg.run.max_steps) if self.cfg.run.max_steps else total

    def show_progress(self, step_in_epoch: int, loss: Callable[[], float],
                      samples_per_sec: float) -> None:
        """Rank 0's progress line when one is due (``--progress-every``; its output not a
        terminal). ``loss()`` reads the epoch's running loss (a host sync: only then)."""
        out = self.out
        if not out.progress_lines or self.progress_clock.elapsed < out.progress_every:
            return
        self.progress_clock = Throughput()
        done = self.state.step - self.first_step
        per_step = self.wall_clock.elapsed / done if done else float("nan")
        out.progress_line(epoch=self.state.epoch + 1, epochs=self.cfg.run.epochs,
                          step_in_epoch=step_in_epoch, n_steps=self.n_steps, loss=loss(),
                          samples_per_sec=samples_per_sec,
                          epoch_eta=(self.n_steps - step_in_epoch) * per_step,
                          run_eta=(self.total_steps - self.state.step) * per_step)

    def restore(self, elastic: bool = False) -> None:
        """Resume from the newest checkpoint (a collective) and report the run's start.

        ``elastic``: no collective. A worker that joins a running elastic job meets the others
        in their next elastic sync, so nothing before it may wait for them: rank 0 alone reads
        the checkpoint and reports, and its first sync hands its state, position and any error
        to every rank (``elastic_start``, taken by ``common.loop.elastic``)."""
        resume = self._restore_position(elastic=elastic)
        self.first_step = self.state.step  # checkpoints after it are this run's own
        self.state.lr_factor = resume.lr_factor
        if resume.lr_factor != 1.0:
            resume.notices.append(f"the LR stays x{resume.lr_factor:g} (rollbacks of the saved "
                                  "run)")
        error = elastic and self.elastic_start["error"]
        if not error:
            error = self.out.start(
                recipe=self.recipe, cfg=self.cfg, recipe_args=self.recipe_args,
                world_size=self.rt.size, notices=resume.notices + self.backend.notices,
                n_train=self.backend.n_train, n_val=self.backend.n_val, describe=self.describe,
                n_steps=self.n_steps, target_lr=self.schedule.target_lr, epoch=self.state.epoch,
                step=self.state.step, checkpoint=self.state.checkpoint,
                replicas=self.backend.data_parallel()[1],
                steps_into_epoch=self.state.samples_done // self.step_samples,
                saved_step=resume.saved_step)
        if elastic:
            self.elastic_start["error"] = error
        else:
            agree(not error, error, self.backend.broadcast_object)
        attempt, cause = restart()
        if attempt and not error:  # hvd-launch --max-restarts relaunched the job
            self.out.record("restart", attempt=attempt, cause=cause, resumed_step=self.state.step,
                            checkpoint=self.state.checkpoint)

    @property
    def step_samples(self) -> int:
        """Samples one optimizer step takes over all replicas."""
        return self.backend.samples_per_step * self.backend.data_parallel()[1]

    def train(self, on_step=None) -> None:
        """Train from the current position to the last epoch or ``--max-steps``.

        ``on_step(epoch_end)`` runs after every step and epoch (elastic commits)."""
        b, run = self.backend, self.cfg.run
        while not self.done:
            self.trained = True
            local = self.epoch_sums or MetricSums(b.train_layout)
            self.epoch_sums = None
            counters = b.zero_counters()
            bar = self.out.bar(self.n_steps, f"epoch {self.state.epoch + 1}/{run.epochs}")
            bar.update(self.n_steps - b.steps_left(self.state.samples_done))
            epoch_clock, seen, last_refresh = Throughput(), 0, 0.0
            times = EpochTimes(comm_clock=b.comm_seconds)
            # A world that shrank, or a stop at an epoch's last step, may leave no step of the
            # epoch: it is complete.
            complete, stopping = b.steps_left(self.state.samples_done) == 0, False
            batches = () if complete else b.train_batches(self.state.epoch, self.state.samples_done)
            for batch in times.batches(batches, self.rt.rank):
                lr = self.lr(self.state.step)
                b.set_lr(lr)
                batch_counters = times.timed_step(b.train_step, batch)
                counters = counters + batch_counters
                if self.state.loss_reference is None:  # once per run: a collective on every rank
                    first = MetricSums(b.train_layout, b.read_counters(batch_counters))
                    self.state.loss_reference = first.global_sums(b.allreduce_sum).loss
                self.state.step += 1
                self.state.samples_done += self.step_samples
                beat(self.state.step)
                seen += b.samples_per_step if b.counts_samples else 0
                complete = b.steps_left(self.state.samples_done) == 0
                stopping = run.max_steps is not None and self.state.step >= run.max_steps
                bar.update()
                self.show_progress(self.n_steps - b.steps_left(self.state.samples_done),
                                   lambda counters=counters: MetricSums(
                                       b.train_layout, b.read_counters(counters)).loss,
                                   epoch_clock.rate(seen * b.data_parallel()[1]))
                if self.out.progress and epoch_clock.elapsed - last_refresh > _BAR_REFRESH_S:
                    last_refresh = epoch_clock.elapsed
                    running = MetricSums(b.train_layout, b.read_counters(counters))
                    bar.set_postfix(loss=f"{running.loss:.3f}", lr=f"{lr:.3g}",
                                    samples_s=f"{epoch_clock.rate(seen * b.data_parallel()[1]):,.0f}")
                self.stop_if_signalled(lambda local=local, counters=counters: MetricSums(
                    b.train_layout, local.values + b.read_counters(counters)))
                if complete or stopping:
                    break
                if self.policy.should_save(self.state.step, self.state.epoch, epoch_complete=False):
                    self.save(MetricSums(b.train_layout, local.values + b.read_counters(counters)))
                    self.state.checked_step = self.state.step
                if on_step:
                    on_step(False)
            bar.close()
            local.add_counters(b.read_counters(counters))
            self.end_epoch(local, epoch_clock.elapsed, seen, complete, stopping, times)
            if on_step:
                on_step(True)
            if stopping:
                break

    def end_epoch(self, local: MetricSums, elapsed: float, seen: int, complete: bool,
                  stopping: bool, times: EpochTimes | None = None) -> None:
        """Global metrics, load balance, validation, the policy's checkpoint and the epoch's
        report."""
        b = self.backend
        number = self.state.epoch + 1
        seen_all = b.allreduce_sum(np.array([float(seen)]))[0]
        balance = {}  # (Keras's fit loop times nothing yet)
        if times is not None:  # the same on every rank: one small collective
            balance = summarize(b.allgather_object(rank_times(times), name="epoch_times"))
        self.samples_per_sec = seen_all / max(elapsed, 1e-9)
        self.train_sums = local.global_sums(b.allreduce_sum)
        self.check_divergence(self.train_sums)  # the same global sums on every rank
        self.state.checked_step = self.state.step
        self.val_sums = b.evaluate().global_sums(b.allreduce_sum)
        if complete:
            self.state.epoch, self.state.samples_done = self.state.epoch + 1, 0
        self.epochs_run += 1
        saved = None
        if self.policy.should_save(self.state.step, self.state.epoch, complete, stopping):
            saved = self.save(None if complete else local)
        self.out.epoch(epoch=number, epochs=self.cfg.run.epochs, step=self.state.step,
                       lr=self.lr(max(self.state.step - 1, 0)), train=self.train_sums,
                       val=self.val_sums, samples_per_sec=self.samples_per_sec,
                       world_size=self.rt.size, elapsed=elapsed, checkpoint=saved, balance=balance,
                       warmup=self.epochs_run == 1, gradients=b.epoch_stats())

    def save(self, epoch_sums: MetricSums | None) -> str | None:
        """Checkpoint the loop's position (a collective; the divergence guard checks first);
        ``epoch_sums``: this rank's sums of an unfinished epoch. Returns the path written."""
        started = time.perf_counter()
        saved = self.checkpoint_manager.save(self.state.state_dict(), epoch_sums,
                                             check=self.check_divergence)
        if saved:  # what the save stopped training for (async: the copy and the agreement)
            self.save_pauses.append(time.perf_counter() - started)
        self.state.checkpoint = saved or self.state.checkpoint
        return saved

    def stop_if_signalled(self, partial: Callable[[], MetricSums]) -> None:
        """After every step, and a collective when the signal watch says one is due (every step,
        or every few short ones): if any rank got a stop signal, every rank saves this
        step (``partial()``: this rank's sums of the epoch so far) and raises Preempted."""
        if not self.signals.due(self.state.step):
            return
        why = self.signals.agreed(self.backend.allreduce_sum, self.rt.rank, self.state.step,
                                  failed=self.checkpoint_manager.write_failed())
        if self.signals.failure:  # rank 0's background write failed: every rank stops, says why
            self.checkpoint_manager.flush()
        if why is None:
            return
        saved = self.save(partial())
        self.checkpoint_manager.flush()  # the file is written before anyone is told it is
        where = (f"checkpoint: {saved}; run the same command to resume" if saved
                 else "no --checkpoint-dir, nothing saved")
        s = self.state
        into = s.samples_done // self.step_samples if s.samples_done else 0
        self.out.print(f"stopped by {why} after step {s.step} ({s.epoch} epoch(s)"
                       + (f" and {into} step(s)" if into else "") + f" done); {where}")
        self.out.close("KILLED", timeout=STOP_FLUSH_S)
        # No rank leaves before rank 0 has said so: mpirun ends the whole job at the first
        # rank's exit 75, which cut rank 0's line off when the other rank got out first.
        self.backend.allreduce_sum(np.zeros(1))
        raise Preempted(why)

    def check_divergence(self, sums: MetricSums | None, weights_finite: bool = True) -> None:
        """Stop every rank together (or roll back) if the guard finds these global sums
        diverged, or the weights are not finite.

        Called on every rank with the same global values; nothing of the diverged steps is
        saved and every checkpoint already written stays."""
        reason = None if sums is None else self.guard.reason(sums.loss, self.state.loss_reference)
        if reason is None and not weights_finite:
            reason = "the weights are not finite (NaN or inf)"
        if reason is None:
            return
        s = self.state
        where = f"between step {s.checked_step + 1} and step {s.step} (epoch {s.epoch + 1})"
        run = self.cfg.run
        if run.on_divergence == "rollback" and s.rollbacks < run.max_rollbacks and s.checkpoint:
            raise Rollback(f"{reason} {where}")  # the same verdict on every rank
        b = self.backend
        # A checkpoint this run wrote after the last sound weights is set aside, not resumed.
        moved, good = self.checkpoint_manager.set_aside_after(self.last_sound_weights)
        aside = f" ({', '.join(moved)} set aside as *.diverged)" if moved else ""
        # What to change: a rollback only where none was tried (rollbacks that did not help
        # leave the LR and the warmup).
        fixes = ("Lower --base-lr or raise --warmup-epochs" if run.on_divergence == "rollback"
                 else "Lower --base-lr or raise --warmup-epochs, or use --on-divergence rollback")
        raise AgreedError(
            f"training diverged: {reason} {where}; nothing of it was saved{aside}; "
            + (f"{self.state.rollbacks} rollback(s) did not help; " if self.state.rollbacks else "")
            + f"last good checkpoint: {good or 'none yet'}. {fixes}, then run again (it resumes "
            f"from that checkpoint)",
            lambda: b.broadcast_object(None, name="diverged"))

    @property
    def last_sound_weights(self) -> int:
        """The newest step whose weights are known sound: the loss of step k is measured on the
        weights after step k-1, so those of the last sound step itself are not vouched for
        (unless this run started there: the checkpoint it resumed from is trusted)."""
        return max(self.state.checked_step - 1, self.first_step)

    def roll_back(self, why: Rollback) -> None:
        """After a divergence every rank agreed on: reload the last good checkpoint (a
        collective) and go on with a lower LR."""
        self.state.rollbacks += 1
        self.state.lr_factor *= self.cfg.run.rollback_lr_factor
        resume = self._restore_position(max_step=self.last_sound_weights)
        self.out.print(f"training diverged: {why}; rollback {self.state.rollbacks} of "
                       f"{self.cfg.run.max_rollbacks}: back to {self.state.checkpoint} (step "
                       f"{self.state.step}), the LR now x{self.state.lr_factor:g}")
        if resume.set_aside:
            self.out.print(f"note: set aside as *.diverged (written after the last sound "
                           f"weights): {', '.join(resume.set_aside)}")

    def train_with_rollbacks(self, train: Callable[[Trainer], None]) -> None:
        """``train(self)``, and again from the last good checkpoint after each rollback."""
        while True:
            try:
                return train(self)
            except Rollback as why:
                self.roll_back(why)

    @property
    def done(self) -> bool:
        """Nothing left to train: every epoch done, or ``--max-steps`` steps in all."""
        max_steps = self.cfg.run.max_steps
        return self.state.epoch >= self.cfg.run.epochs or (
            max_steps is not None and self.state.step >= max_steps)

    def final(self) -> dict[str, Any]:
        """The final record; a run that had nothing left to train reports the restored model."""
        waited = time.perf_counter()
        self.checkpoint_manager.flush()  # the last checkpoint is on disk before the run says so
        waited = time.perf_counter() - waited
        if not self.trained and self.done:
            self.val_sums = self.backend.evaluate().global_sums(self.backend.allreduce_sum)
            run = self.cfg.run
            reached = (f"{self.state.epoch} epoch(s) done (--epochs {run.epochs})"
                       if self.state.epoch >= run.epochs
                       else f"step {self.state.step} done (--max-steps {run.max_steps})")
            self.out.print(f"already trained: {reached}, {self.state.checkpoint}; nothing "
                           "to do (to train afresh, give another --run-dir, or raise --epochs "
                           "to train on)")
        stats = {**self.backend.run_stats(), "restarts": restart()[0]}
        if self.save_pauses:  # what saving cost the loop, on this rank (rank 0 reports)
            stats.update(checkpoints=len(self.save_pauses),
                         checkpoint_pause_s=round(sum(self.save_pauses), 4),
                         checkpoint_pause_max_s=round(max(self.save_pauses), 4),
                         checkpoint_final_wait_s=round(waited, 4))
        found = profiling.finish(getattr(self.backend, "hvd", None), self.cfg.profiling, self.rt.is_root,
                                 self.timeline, self.cfg.output.metrics_file)
        if "timeline" in found:
            self.out.print(profiling.timeline_line(found["timeline"]))
        if "autotune" in found:
            self.out.print(profiling.autotune_line(found["autotune"]))
        return self.out.final(recipe=self.recipe, epochs=self.cfg.run.epochs, step=self.state.step,
                              train=self.train_sums, val=self.val_sums,
                              samples_per_sec=self.samples_per_sec, world_size=self.rt.size,
                              wall=self.wall_clock.elapsed, checkpoint=self.state.checkpoint,
                              stats={**stats, **found}, since_start=seconds_since_start())


EpochRunner = Callable[[Trainer, Callable[[bool], None] | None], None]


def fit(backend: Backend, cfg: TrainConfig, recipe: str, recipe_args: dict[str, Any] | None = None,
        describe: str = "", elastic: ElasticConfig | None = None,
        run_epochs: EpochRunner | None = None) -> dict[str, Any]:
    """Train to ``cfg.run.epochs`` (resuming if a checkpoint exists); return the final record.

    Every rank must call this. ``elastic``: run under Horovod elastic (``horovodrun
    --host-discovery-script ...``), surviving workers that leave or join. ``run_epochs(trainer,
    on_step)``: what trains from the trainer's position on (default :meth:`Trainer.train`;
    ``common.loop.keras_fit`` hands over Keras's ``model.fit``).
    """
    trainer = Trainer(backend, cfg, recipe, recipe_args, describe)
    run_epochs = run_epochs or Trainer.train
    try:
        with trainer.running(elastic is not None):
            trainer.restore(elastic is not None)
            if elastic is None:
                trainer.train_with_rollbacks(lambda t: run_epochs(t, None))
            else:
                train_elastic(trainer, elastic.commit_steps,
                              lambda commit: run_epochs(trainer, commit))
            record = trainer.final()
    except BaseException:
        trainer.out.close("FAILED", timeout=STOP_FLUSH_S)  # a stop has ended it as KILLED
        raise
    report_folds(cfg, record)  # --folds K --mpi-groups K: the summary of every fold
    return record
