"""Store owns a run's checkpoint files: names, the lock, keep-last-K vouched for, the newest readable one.

Every write goes through ``common.base.files.atomic_write``; a file that fails its checksum is
moved aside (``*.corrupt``) and skipped, never loaded.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from common.base.files import (
    TMP_PREFIX,
    CheckpointError,
    CorruptCheckpoint,
    atomic_write,
    write_error,
)

_NAME = re.compile(r"^ckpt-e(\d{5})-s(\d{9})\.(\w+)$")
LOCK_NAME = ".lock"
CORRUPT_SUFFIX = ".corrupt"
DIVERGED_SUFFIX = ".diverged"


@dataclass(frozen=True, order=True)
class CheckpointRef:
    """One checkpoint file: after ``epoch`` full epochs and ``step`` optimizer steps in all.

    Ordered by epoch, then step: a step counts steps of the world that took it, so after a
    world change (a resume on another number of workers, an elastic run that grew) a newer
    checkpoint can carry a smaller step (epoch 4 at step 236 on 3 workers after epoch 3 at
    step 267 on 2)."""

    epoch: int
    step: int
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
                refs.append(CheckpointRef(int(m.group(1)), int(m.group(2)),
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
        """Write a checkpoint atomically, then delete the oldest of the vouched-for ones beyond
        the newest ``keep``.

        A checkpoint is vouched for once a later check of the run passed: the divergence check
        before each save measures the loss on the weights of every older checkpoint, not on
        the one it is about to write. So the new one does not count toward keep-K until the
        next save, and the folder holds keep + 1 between saves: a run that starts to diverge
        cannot push out the good checkpoints with ones nothing has vouched for yet."""
        path = self.path_for(epoch, step)
        try:
            atomic_write(path, write)
        except OSError as e:
            raise CheckpointError(f"cannot write checkpoint {path!r}: {e.strerror or e}; the "
                                  "checkpoints already there are kept") from e
        except Exception as e:  # noqa: BLE001 - a serialiser's own error for a failed write
            raise CheckpointError(f"cannot write checkpoint {path!r}: {write_error(e, path)}; the "
                                  "checkpoints already there are kept") from e
        new = CheckpointRef(epoch, step, path)
        vouched = [ref for ref in self.list() if ref < new]
        for old in vouched[: -self.keep]:
            os.unlink(old.path)
        return path

    def room(self, path: str) -> str | None:
        """After a save: a one-line warning if this folder cannot hold keep-K checkpoints of
        ``path``'s size, the newest that nothing has vouched for yet and the next one while it
        is written (before the oldest goes), with the fix; None when it can. Without it, every
        run resumed here fails at the same save."""
        try:
            size = os.path.getsize(path)
            ours = sum(os.path.getsize(ref.path) for ref in self.list())
            free = shutil.disk_usage(self.directory).free
        except OSError:
            return None
        need, room = (self.keep + 2) * size, free + ours
        if not size or room >= need:
            return None
        fits = room // size - 2  # vouched checkpoints that can be kept beside the other two
        fix = (f"lower --keep-checkpoints to {fits}" if fits >= 1 else
               "no smaller --keep-checkpoints fits")
        return (f"warning: --keep-checkpoints {self.keep} needs room for {self.keep + 2} "
                f"checkpoints of {_mb(size)} here (the kept ones, the newest until the next "
                f"save vouches for it, and the next while it is written): {_mb(need)}, but "
                f"{self.directory} has {_mb(room)} for them ({_mb(free)} free); a later save "
                f"will fail with a full disk. Free space there, use another --checkpoint-dir, "
                f"or {fix}")

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




def _mb(n: float) -> str:
    return f"{n / 1e6:.1f} MB"
