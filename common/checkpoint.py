"""Checkpoint owns checkpoints for every framework: when to save, the save/restore protocol, and the files.

* :class:`SavePolicy` decides when a checkpoint is written (every N epochs, every N steps, at
  the end, when a run stops early): the one place for a new rule.
* :class:`CheckpointManager` runs the protocol, a collective on every rank: rank 0 reads the
  newest valid checkpoint, all ranks agree on errors, then receive its state by broadcast; on
  save every rank's RNG state and partial-epoch metric sums are gathered and rank 0 writes.
  The contents are the same for every framework; the backend only turns its model and optimizer
  state into a file and back (``Backend.write_checkpoint`` / ``read_checkpoint``).
* :class:`CheckpointStore` owns the files: naming, atomic writes, keep-last-K and finding the
  newest readable one. A file is written to a temporary name in the same directory, fsynced,
  renamed over its final name and the directory fsynced, so a crash leaves either the old set of
  checkpoints or the new one, never a torn file under a checkpoint's name.
* Each file carries a SHA-256 of its content (:func:`with_checksum`), verified on load
  (:func:`verified`): a file whose bytes changed silently is moved aside and skipped like a
  torn one, never loaded.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import re
import socket
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from common.failure import UserError, agree
from common.metrics import MetricSums

if TYPE_CHECKING:
    from common.backend import Backend
    from common.config import TrainConfig

_NAME = re.compile(r"^ckpt-e(\d{5})-s(\d{9})\.(\w+)$")
LOCK_NAME = ".lock"
CORRUPT_SUFFIX = ".corrupt"
DIVERGED_SUFFIX = ".diverged"


class CheckpointError(UserError):
    """A checkpoint that cannot be used (wrong model, unreadable, unwritable)."""


def _why(e: Exception, path: str) -> str:
    """Why a write failed, in words: a full disk first (serialisers hide ENOSPC)."""
    try:
        st = os.statvfs(os.path.dirname(os.path.abspath(path)))
        if st.f_bavail * st.f_frsize < 1 << 20:
            return os.strerror(errno.ENOSPC)
    except OSError:
        pass
    return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"


CHECKSUM_KEY = "checksum"


class CorruptCheckpoint(ValueError):
    """A checkpoint file whose content does not match the checksum written into it."""


def content_digest(value: Any) -> str:
    """SHA-256 of a checkpoint's content: nested dicts (keys sorted), lists and tuples (alike),
    arrays and tensors (dtype, shape and bytes), and other values by ``repr``."""
    h = hashlib.sha256()

    def text(v: Any) -> None:  # length-prefixed, so [1, 2] and [12] differ
        r = repr(v).encode()
        h.update(b"%d:" % len(r) + r)

    def feed(v: Any) -> None:
        if isinstance(v, dict):
            h.update(b"{")
            for k in sorted(v, key=str):
                text(k)
                feed(v[k])
            h.update(b"}")
        elif isinstance(v, list | tuple):
            h.update(b"[")
            for x in v:
                feed(x)
            h.update(b"]")
        elif isinstance(v, np.ndarray) or hasattr(v, "detach"):
            if hasattr(v, "detach"):  # a torch tensor (bfloat16 has no numpy twin: widen it)
                v = v.detach().cpu()
                v = (v.float() if str(v.dtype) == "torch.bfloat16" else v).numpy()
            h.update(f"<{v.dtype.str}{v.shape}>".encode())
            h.update(np.ascontiguousarray(v).tobytes())
        else:
            text(v)

    feed(value)
    return "sha256:" + h.hexdigest()


def with_checksum(payload: dict) -> dict:
    """``payload`` plus the checksum of its content, to be written as one file."""
    return {**payload, CHECKSUM_KEY: content_digest(payload)}


def verified(payload: dict) -> dict:
    """``payload`` as read back, without its checksum; CorruptCheckpoint if they disagree.
    (Files written before checksums existed have none and are taken as they are.)"""
    payload = dict(payload)
    stored = payload.pop(CHECKSUM_KEY, None)
    if stored is not None and stored != content_digest(payload):
        raise CorruptCheckpoint("its content does not match its checksum")
    return payload


TMP_PREFIX = ".tmp-"


def current_umask() -> int:
    """The process's umask now, read without changing it (Linux's /proc/self/status), so that
    a thread writing files meanwhile never sees another; elsewhere set and restored at once."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: str, write: Callable[[Any], None], mode: str = "wb") -> None:
    """Write a file atomically: ``write(f)`` fills a temp file that is fsynced and renamed.

    The file gets the permissions of an ordinary new file under the user's umask."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, dir=directory)
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    dfd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


@dataclass(frozen=True, order=True)
class CheckpointRef:
    """One checkpoint file: after ``epoch`` full epochs and ``step`` optimizer steps in all."""

    step: int
    epoch: int
    path: str


class CheckpointStore:
    """The checkpoints of one run in one directory, ``ckpt-e<epoch>-s<step>.<suffix>``."""

    def __init__(self, directory: str, keep: int = 3, suffix: str = "pt") -> None:
        if keep < 1:
            raise ValueError("keep must be at least 1")
        self.directory = directory
        self.keep = keep
        self.suffix = suffix
        self._lock_file = None

    def lock(self) -> list[str]:
        """Become the directory's one writer (rank 0, for the whole run); returns notices.

        A second job on the same directory gets a CheckpointError naming the holder. Holding
        the lock, temporary files left by a writer that was killed are removed."""
        if getattr(self, "_lock_file", None) is not None:  # held already (a rollback)
            return []
        try:
            os.makedirs(self.directory, exist_ok=True)
            f = open(os.path.join(self.directory, LOCK_NAME), "a+")  # noqa: SIM115 - held open
        except OSError as e:
            raise CheckpointError(f"cannot use --checkpoint-dir {self.directory!r}: "
                                  f"{e.strerror or e}") from None
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            holder = f.read().strip() or "unknown"
            f.close()
            raise CheckpointError(f"--checkpoint-dir {self.directory!r} is in use by another "
                                  f"job ({holder}); stop it, or use another directory") from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {socket.gethostname()} since "
                f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        f.flush()
        self._lock_file = f
        leftovers = [n for n in os.listdir(self.directory) if n.startswith(TMP_PREFIX)]
        for name in leftovers:
            os.unlink(os.path.join(self.directory, name))
        if leftovers:
            return [f"removed {len(leftovers)} temporary file(s) left by an interrupted write "
                    f"in {self.directory!r}"]
        return []

    def path_for(self, epoch: int, step: int) -> str:
        return os.path.join(self.directory, f"ckpt-e{epoch:05d}-s{step:09d}.{self.suffix}")

    def list(self) -> list[CheckpointRef]:
        """This store's checkpoints, oldest first (temporary and foreign files are ignored)."""
        if not os.path.isdir(self.directory):
            return []
        refs = []
        for name in os.listdir(self.directory):
            m = _NAME.match(name)
            if m and m.group(3) == self.suffix:
                refs.append(CheckpointRef(int(m.group(2)), int(m.group(1)),
                                          os.path.join(self.directory, name)))
        return sorted(refs)

    def set_aside(self, after_step: int, suffix: str) -> list[str]:
        """Rename the checkpoints newer than ``after_step`` to ``<name><suffix>``; their names."""
        moved = []
        for ref in self.list():
            if ref.step > after_step:
                os.replace(ref.path, ref.path + suffix)
                moved.append(os.path.basename(ref.path))
        return moved

    def save(self, epoch: int, step: int, write: Callable[[Any], None]) -> str:
        """Write a checkpoint atomically, then delete all but the newest ``keep``."""
        path = self.path_for(epoch, step)
        try:
            atomic_write(path, write)
        except OSError as e:
            raise CheckpointError(f"cannot write checkpoint {path!r}: {e.strerror or e}; the "
                                  "checkpoints already there are kept") from e
        except Exception as e:  # noqa: BLE001 - a serialiser's own error for a failed write
            raise CheckpointError(f"cannot write checkpoint {path!r}: {_why(e, path)}; the "
                                  "checkpoints already there are kept") from e
        for old in self.list()[: -self.keep]:
            os.unlink(old.path)
        return path

    def newest_valid(
        self, load: Callable[[str], Any], max_step: int | None = None
    ) -> tuple[CheckpointRef, Any, list[str]] | None:
        """Load the newest checkpoint that ``load`` can read, skipping unreadable ones.

        Returns (ref, loaded state, names of the newer files skipped as unreadable), or None
        when the directory holds no checkpoint.

        ``max_step``: only checkpoints of that step or earlier (a rollback's target).
        ``load`` raises CheckpointError for a file that is readable but wrong (another model):
        that stops the search, since resuming from an older file would silently go back in time.
        """
        skipped = []
        for ref in reversed(self.list()):
            if max_step is not None and ref.step > max_step:
                continue
            try:
                return ref, load(ref.path), skipped
            except CheckpointError:
                raise
            except Exception as e:  # noqa: BLE001 - a torn or corrupt file: try the one before
                why = str(e) if isinstance(e, CorruptCheckpoint) else type(e).__name__
                skipped.append(f"{os.path.basename(ref.path)} ({why}; moved "
                               f"to {os.path.basename(ref.path)}{CORRUPT_SUFFIX})")
                # Aside, it no longer counts toward keep-K nor is read again at every restart.
                os.replace(ref.path, ref.path + CORRUPT_SUFFIX)
        if skipped:
            raise CheckpointError(
                f"no readable checkpoint in {self.directory!r}; unreadable: {', '.join(skipped)}"
            )
        return None


# Recipes renamed to match their file names; their older checkpoints still resume.
RECIPE_ALIASES = {"pytorch/imagenet": "pytorch/imagenet_resnet50"}


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
        self.lr_factor = 1.0  # the LR multiplier rollbacks left; saved with each checkpoint
        self.seed = cfg.run.seed
        self.policy = SavePolicy.from_config(cfg)
        c = cfg.checkpoint
        self.store = (CheckpointStore(c.checkpoint_dir, c.keep_checkpoints,
                                      suffix=backend.checkpoint_suffix)
                      if c.checkpoint_dir else None)

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
    _NOT_SETTINGS = {"checkpoint_dir", "metrics_file", "log_dir", "progress", "epochs",
                     "max_steps", "data_workers", "threads_per_worker", "keep_checkpoints",
                     "checkpoint_epochs", "checkpoint_steps"}

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
        rt = self.backend.runtime()
        found, error, notices, moved = None, "", [], []
        if rt.is_root and self.store is not None:
            try:
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
        agree(not error, error, self.backend.broadcast_object)
        meta = None
        if found:
            ref, record, _ = found
            meta = {k: record.get(k) for k in ("epoch", "step", "rng", "world_size",
                                                 "steps_per_epoch", "epoch_sums", "lr_factor")}
            meta["path"] = ref.path
            meta["set_aside"] = moved
        meta = self.backend.broadcast_object(meta, name="ckpt_meta")
        self.backend.broadcast_state()
        if meta is None:
            return Resume(notices=notices)
        resume = Resume(meta["epoch"], meta["step"], meta["path"], notices=notices,
                        lr_factor=float(meta["lr_factor"] or 1.0), set_aside=meta["set_aside"])
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
            try:
                moved = self.store.set_aside(step, DIVERGED_SUFFIX)
                left = self.store.list()
                result = (moved, left[-1].path if left else None)
            except OSError:
                pass
        return self.backend.broadcast_object(result, name="set_aside")

    def save(self, epoch: int, step: int, epoch_sums: MetricSums | None = None,
             check: Callable[[MetricSums], None] | None = None) -> str | None:
        """Write a checkpoint after ``epoch`` full epochs and ``step`` steps from rank 0 (a
        collective); returns its path. ``epoch_sums``: this rank's counters of the epoch in
        progress, so that a run resumed mid-epoch reports the epoch as an uninterrupted one.
        ``check(global sums or None, weights finite on every rank)`` runs on every rank before
        anything is written (the divergence guard: it raises on every rank alike, since every
        rank gathers the same values)."""
        if self.store is None and check is None:
            return None
        rt = self.backend.runtime()
        rngs = self.backend.allgather_object(self.backend.rng_state(), name="rng_states")
        sums = None if epoch_sums is None else epoch_sums.to_array().tolist()
        all_sums = self.backend.allgather_object(sums, name="epoch_sums")
        if check is not None:
            finite = self.backend.allreduce_sum(
                np.array([float(self.backend.weights_finite())]))[0] == rt.size
            check(None if sums is None else MetricSums(epoch_sums.layout, np.sum(all_sums, axis=0)),
                  finite)
        if self.store is None:
            return None
        path, error = None, ""
        state = self.backend.state_to_save()
        if rt.is_root:
            record = {"recipe": self.recipe, "signature": self.backend.signature(),
                      "epoch": epoch, "step": step, "rng": rngs, "world_size": rt.size,
                      "steps_per_epoch": self.steps_per_epoch,
                      "epoch_sums": None if sums is None else all_sums,
                      "config": self.config, "lr_factor": self.lr_factor,
                      "state": state}
            try:
                path = self.store.save(epoch, step,
                                       lambda f: self.backend.write_checkpoint(f, record))
            except CheckpointError as e:
                error = str(e)
        agree(not error, error, self.backend.broadcast_object)
        return self.backend.broadcast_object(path, name="ckpt_path")
