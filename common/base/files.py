"""Files owns writing files that survive any crash (temp file, fsync, rename) and checksums verified on read.

A file is written to a temporary name in the same directory, fsynced, renamed over its final
name and the directory fsynced (:func:`atomic_write`), so a crash leaves the old file or the new
one, never a torn file under its name. A checkpoint carries a SHA-256 of its content
(:func:`with_checksum`), verified on load (:func:`verified`): a file whose bytes changed silently
is never loaded.
"""

from __future__ import annotations

import errno
import hashlib
import os
import tempfile
from collections.abc import Callable
from typing import Any

from common.base.errors import UserError


class CheckpointError(UserError):
    """A checkpoint that cannot be used (wrong model, unreadable, unwritable)."""


def write_error(e: Exception, path: str) -> str:
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
    import numpy as np  # here, not at the top: the horovodrun wrapper writes files without it

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
            h.update(np.ascontiguousarray(v).reshape(-1).view(np.uint8))  # no copy
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


