"""Manager owns the checkpoint protocol of every framework: restore by broadcast, save on rank 0, agreed.

:class:`CheckpointManager` runs the protocol, a collective on every rank: rank 0 reads the
newest valid checkpoint (``common.checkpoint.store``), all ranks agree on errors, then receive
its state by broadcast; on save every rank's RNG state and partial-epoch metric sums are
gathered and rank 0 writes: with ``--checkpoint-mode async`` (the default) a copy of the state
taken at the step, written by a background thread while training goes on
(``common.checkpoint.writer``); the next save, a rollback, a stop and the end of the run wait for
it, and a write that failed is agreed by every rank at the loop's next agreement (:meth:`flush`).
When to save is the ``SavePolicy``'s (``common.checkpoint.policy``).
The contents are the same for every framework; the backend only turns its model and optimizer
state into a file and back (``Backend.write_checkpoint`` / ``read_checkpoint``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from common.base.errors import AgreedError, agree, say
from common.base.files import CheckpointError
from common.checkpoint.policy import SavePolicy
from common.checkpoint.store import DIVERGED_SUFFIX, CheckpointStore
from common.checkpoint.writer import BackgroundWriter
from common.monitor.metrics import MetricSums

if TYPE_CHECKING:
    from common.config.core import TrainConfig
    from common.frameworks.backend import Backend


# Recipes renamed to match their file names; their older checkpoints still resume.
RECIPE_ALIASES = {"pytorch/imagenet": "pytorch/imagenet_resnet50"}


@dataclass
class Resume:
    """Where a run continues: full epochs and optimizer steps done, from which checkpoint.

    ``epoch_sums`` are this rank's metric counters of the epoch in progress (resuming mid-epoch
    with the same world); ``notices`` are rank 0's remarks for the user.
    """

    epoch: int = 0
    step: int = 0
    checkpoint: str | None = None
    epoch_sums: list[float] | None = None
    notices: list[str] = field(default_factory=list)
    lr_factor: float = 1.0  # the LR multiplier rollbacks left (``--on-divergence rollback``)
    set_aside: list[str] = field(default_factory=list)  # renamed *.diverged by a rollback
    saved_step: int = 0  # the step in the checkpoint (``step`` differs after a world change)


class CheckpointManager:
    """Rank-0 checkpoints of a backend's model and optimizer, restored on every rank by broadcast.

    Every rank calls :meth:`restore` once before training and :meth:`save` at the same points;
    both are collectives. A checkpoint holds the model and optimizer state, epoch and step,
    every rank's RNG state, every rank's partial-epoch metric counters, the world size and steps
    per epoch it was written with, the model's signature and the run's config.
    """

    def __init__(self, backend: Backend, cfg: TrainConfig, recipe: str,
                 steps_per_epoch: int = 1) -> None:
        self.backend, self.recipe = backend, recipe
        self.steps_per_epoch = steps_per_epoch
        self.config = cfg.as_dict()
        self.seed = cfg.run.seed
        self.policy = SavePolicy.from_config(cfg)
        c = cfg.checkpoint
        self.store = (CheckpointStore(c.checkpoint_dir, c.keep_checkpoints,
                                      suffix=backend.checkpoint_suffix)
                      if c.checkpoint_dir else None)
        self._room_checked = False  # whether the folder's room for keep-K was checked (rank 0)
        # --checkpoint-mode async: rank 0 writes in the background while training goes on.
        self.asynchronous = c.checkpoint_mode == "async"
        self.writer = BackgroundWriter()

    def _load(self, path: str) -> dict:
        record = self.backend.read_checkpoint(path)
        recipe = RECIPE_ALIASES.get(record.get("recipe"), record.get("recipe"))
        if recipe != self.recipe:
            raise CheckpointError(f"{path!r} was saved by recipe {record.get('recipe')!r}, not "
                                  f"{self.recipe!r}; use another --checkpoint-dir")
        theirs, ours = record.get("signature"), self.backend.signature()
        if theirs != ours:
            diff = sorted(set(map(str, theirs or [])) ^ set(map(str, ours)))[:2]
            raise CheckpointError(f"{path!r} holds a different model or optimizer (first "
                                  f"differences: {'; '.join(diff)}); use another --checkpoint-dir")
        return record

    # Settings that may differ between a run and its resumption without changing what is trained.
    _NOT_SETTINGS = {"checkpoint_dir", "metrics_file", "log_dir", "progress", "progress_every",
                     "run_dir", "stall_timeout", "stop_signals", "compile", "epochs",
                     "max_steps", "data_workers", "threads_per_worker", "keep_checkpoints",
                     "checkpoint_mode", "checkpoint_epochs", "checkpoint_steps", "tracker",
                     "tracking_uri", "experiment"}

    def changed_settings(self, saved: dict | None) -> str:
        """``name old -> new`` for each training setting this run changes ('' if none)."""
        if not saved:
            return ""
        return ", ".join(f"{k} {saved[k]!r} -> {v!r}" for k, v in self.config.items()
                         if k in saved and k not in self._NOT_SETTINGS and saved[k] != v)

    def restore(self, max_step: int | None = None) -> Resume:
        """Resume from the newest valid checkpoint (rank 0 reads, all ranks receive).

        ``max_step`` (a rollback): the newest of that step or earlier; newer ones are renamed
        ``*.diverged`` so that no later run resumes from them."""
        error, meta, notices = self.read(max_step)
        agree(not error, error, self.backend.broadcast_object)
        meta = self.backend.broadcast_object(meta, name="ckpt_meta")
        self.backend.broadcast_state()
        return self.resume(meta, notices)

    def read(self, max_step: int | None = None) -> tuple[str, dict | None, list[str]]:
        """Rank 0's half of :meth:`restore`, no collective: load the newest valid checkpoint
        into this rank's model and optimizer. Returns (error, what every rank needs to resume:
        ``None`` if nothing was found, rank 0's notices); other ranks get ('', None, [])."""
        rt = self.backend.runtime()
        found, error, notices, moved = None, "", [], []
        if rt.is_root and self.store is not None:
            error = self.writer.wait()  # a rollback reads what the last save wrote
            try:
                if error:
                    raise CheckpointError(error)
                notices += self.store.lock()
                found = self.store.newest_valid(self._load, max_step)
                if max_step is not None and not found:
                    raise CheckpointError(f"training diverged and no checkpoint of step "
                                          f"{max_step} or earlier is left to roll back to")
                if max_step is not None:
                    moved = self.store.set_aside(max_step, DIVERGED_SUFFIX)
                if found:
                    ref, record, skipped = found
                    self.backend.load_state(record["state"], ref.path)
                    if skipped:
                        notices.append(f"skipped unreadable checkpoints: {', '.join(skipped)}")
                    changed = self.changed_settings(record.get("config"))
                    if changed:
                        notices.append(f"resuming with settings that differ from the saved "
                                       f"run's: {changed}")
            except CheckpointError as e:
                error = str(e)
        meta = None
        if found and not error:
            ref, record, _ = found
            meta = {k: record.get(k) for k in ("epoch", "step", "rng", "world_size",
                                                 "steps_per_epoch", "epoch_sums", "lr_factor")}
            meta["path"] = ref.path
            meta["set_aside"] = moved
        return error, meta, notices

    def resume(self, meta: dict | None, notices: list[str]) -> Resume:
        """Every rank's half of :meth:`restore`, no collective: where to continue from rank 0's
        ``meta`` (from :meth:`read`), this rank's RNG streams and partial-epoch counters."""
        rt = self.backend.runtime()
        if meta is None:
            return Resume(notices=notices)
        resume = Resume(meta["epoch"], meta["step"], meta["path"], notices=notices,
                        lr_factor=float(meta["lr_factor"] or 1.0), set_aside=meta["set_aside"],
                        saved_step=meta["step"])
        if meta["world_size"] == rt.size and meta["steps_per_epoch"] == self.steps_per_epoch:
            if meta["rng"] is not None:
                self.backend.set_rng_state(meta["rng"][rt.rank])
            if meta["epoch_sums"] is not None:
                resume.epoch_sums = meta["epoch_sums"][rt.rank]
        else:
            # Steps mean other sample counts now: continue from the last full epoch.
            resume.step = meta["epoch"] * self.steps_per_epoch
            notices.append(f"checkpoint was written by {meta['world_size']} worker(s) at "
                           f"{meta['steps_per_epoch']} steps/epoch, this run has {rt.size} at "
                           f"{self.steps_per_epoch}: continuing from the start of epoch "
                           f"{meta['epoch'] + 1} with fresh data order and RNG streams")
            self.backend.seed(self.seed + 1_000_003 * meta["epoch"] + rt.rank)
        return resume

    def set_aside_after(self, step: int) -> tuple[list[str], str | None]:
        """Rename checkpoints newer than ``step`` to ``*.diverged`` (rank 0; a collective):
        returns their names and the newest checkpoint left, on every rank."""
        result: tuple[list[str], str | None] = ([], None)
        if self.backend.runtime().is_root and self.store is not None:
            self.writer.wait()  # the write in flight first (its error is not the news here)
            try:
                moved = self.store.set_aside(step, DIVERGED_SUFFIX)
                left = self.store.list()
                result = (moved, left[-1].path if left else None)
            except OSError:
                pass
        return self.backend.broadcast_object(result, name="set_aside")

    def save(self, position: Mapping[str, Any], epoch_sums: MetricSums | None = None,
             check: Callable[[MetricSums], None] | None = None) -> str | None:
        """Write a checkpoint of the loop's ``position`` (``LoopState.state_dict()``: after
        ``epoch`` full epochs and ``step`` steps, with the LR factor rollbacks left) from rank 0
        (a collective); returns its path. ``epoch_sums``: this rank's counters of the epoch in
        progress, so that a run resumed mid-epoch reports the epoch as an uninterrupted one.
        ``check(global sums or None, weights finite on every rank)`` runs on every rank before
        anything is written (the divergence guard: it raises on every rank alike, since every
        rank gathers the same values). Async: the path it will have once written; the write
        before this one is waited for, and its error agreed, here."""
        if self.store is None and check is None:
            return None
        epoch, step = position["epoch"], position["step"]
        rt = self.backend.runtime()
        # One collective tells every rank everything the save needs: each rank's RNG state and
        # epoch counters, whether its weights are finite, and rank 0's news of its write before
        # this one (async; waited for here). The fewer collectives, the shorter the pause.
        sums = None if epoch_sums is None else epoch_sums.to_array().tolist()
        mine = {"rng": self.backend.rng_state(), "sums": sums,
                "finite": True if check is None else bool(self.backend.weights_finite()),
                "error": self.writer.wait() if rt.is_root else ""}
        gathered = self.backend.allgather_object(mine, name="save_state")
        if gathered[0]["error"]:
            raise AgreedError(gathered[0]["error"],
                              lambda: self.backend.broadcast_object(None, name="save_failed"))
        rngs, all_sums = [g["rng"] for g in gathered], [g["sums"] for g in gathered]
        if check is not None:
            check(None if sums is None else MetricSums(epoch_sums.layout, np.sum(all_sums, axis=0)),
                  all(g["finite"] for g in gathered))
        if self.store is None:
            return None
        error = ""
        state = self.backend.state_to_save()
        if rt.is_root:
            if self.asynchronous:  # the state as it is now, for the thread to write
                state = self.backend.host_copy(state)
            record = {"recipe": self.recipe, "signature": self.backend.signature(),
                      "epoch": epoch, "step": step, "rng": rngs, "world_size": rt.size,
                      "steps_per_epoch": self.steps_per_epoch,
                      "epoch_sums": None if sums is None else all_sums,
                      "config": self.config, "lr_factor": position["lr_factor"],
                      "state": state}
            if self.asynchronous:
                self.writer.submit(lambda: self._write(record))
            else:
                try:
                    self._write(record)
                except CheckpointError as e:
                    error = str(e)
        if not self.asynchronous:  # every rank waits for the write and learns how it went
            agree(not error, error, self.backend.broadcast_object)
        return self.store.path_for(epoch, step)

    def _write(self, record: dict) -> str:
        """Rank 0: write ``record`` through the store (keep-K included); the first save also
        checks the folder's room for keep-K. Returns the path; CheckpointError if it failed."""
        path = self.store.save(record["epoch"], record["step"],
                               lambda f: self.backend.write_checkpoint(f, record))
        if not self._room_checked:  # the first save tells the size
            self._room_checked = True
            warning = self.store.room(path)
            if warning:
                say(warning)
        return path

    def write_failed(self) -> bool:
        """Rank 0: whether a background write has failed (no waiting): the loop's next
        agreement then has every rank call :meth:`flush`, which says why."""
        return self.writer.failed()

    def flush(self) -> None:
        """Wait for rank 0's write in flight (a collective): every rank raises AgreedError if it
        failed. Before whatever needs the file: a stop, the end of the run."""
        error = self.writer.wait() if self.backend.runtime().is_root else ""
        agree(not error, error, self.backend.broadcast_object)
