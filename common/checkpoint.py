"""Checkpoint owns the checkpoint files: naming, atomic writes, keep-last-K and finding the newest.

It is framework-agnostic: a framework adapter turns its state into bytes and back
(``common.torch_backend`` uses ``torch.save`` / ``torch.load(weights_only=True)``). Only rank 0
calls the writing methods. A file is written to a temporary name in the same directory,
fsynced, renamed over its final name and the directory fsynced, so a crash leaves either the
old set of checkpoints or the new one, never a torn file under a checkpoint's name.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from common.failure import UserError

_NAME = re.compile(r"^ckpt-e(\d{5})-s(\d{9})\.(\w+)$")


class CheckpointError(UserError):
    """A checkpoint that cannot be used (wrong model, unreadable, unwritable)."""


def atomic_write(path: str, write: Callable[[Any], None], mode: str = "wb") -> None:
    """Write a file atomically: ``write(f)`` fills a temp file that is fsynced and renamed."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
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

    def save(self, epoch: int, step: int, write: Callable[[Any], None]) -> str:
        """Write a checkpoint atomically, then delete all but the newest ``keep``."""
        path = self.path_for(epoch, step)
        try:
            atomic_write(path, write)
        except OSError as e:
            raise CheckpointError(f"cannot write checkpoint {path!r}: {e.strerror or e}") from e
        for old in self.list()[: -self.keep]:
            os.unlink(old.path)
        return path

    def newest_valid(
        self, load: Callable[[str], Any]
    ) -> tuple[CheckpointRef, Any, list[str]] | None:
        """Load the newest checkpoint that ``load`` can read, skipping unreadable ones.

        Returns (ref, loaded state, names of the newer files skipped as unreadable), or None
        when the directory holds no checkpoint.

        ``load`` raises CheckpointError for a file that is readable but wrong (another model):
        that stops the search, since resuming from an older file would silently go back in time.
        """
        skipped = []
        for ref in reversed(self.list()):
            try:
                return ref, load(ref.path), skipped
            except CheckpointError:
                raise
            except Exception as e:  # noqa: BLE001 - a torn or corrupt file: try the one before
                skipped.append(f"{os.path.basename(ref.path)} ({type(e).__name__})")
        if skipped:
            raise CheckpointError(
                f"no readable checkpoint in {self.directory!r}; unreadable: {', '.join(skipped)}"
            )
        return None
