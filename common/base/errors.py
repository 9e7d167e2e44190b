"""Errors owns the error vocabulary of every layer: bad input, errors all ranks agreed on, one line per rank.

Two rules make a multi-worker job fail cleanly:

* Errors that only some ranks can see (a checkpoint read by rank 0, say) are agreed on with
  :func:`agree` before the next collective, so every rank raises the same error together.
* Any error that escapes a recipe ends its process at once (``common.faults.ending.run_main``),
  so that the launcher stops the other ranks instead of leaving them waiting in an allreduce.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable


class UserError(Exception):
    """Bad input from the user (flag, data, checkpoint): reported in one line, no traceback."""


class AgreedError(UserError):
    """A UserError that every rank raised together (from :func:`agree`).

    ``sync`` is a collective that every rank calls after printing the message, so that all
    ranks have said it before any of them exits and the launcher stops the rest.
    """

    def __init__(self, message: str, sync: Callable[[], object]) -> None:
        super().__init__(message)
        self.sync = sync


def agree(ok: bool, message: str, broadcast_object: Callable, root_rank: int = 0) -> None:
    """Make a root-only check collective: every rank raises AgreedError(message) if root failed.

    ``broadcast_object`` is the framework's ``hvd.broadcast_object``. Every rank must call this.
    """
    ok, message = broadcast_object((bool(ok), str(message)), root_rank=root_rank)
    if not ok:
        raise AgreedError(message, lambda: broadcast_object(None, root_rank=root_rank))


def say(line: str) -> None:
    """Print one line to stderr in one write: launchers that tag each chunk of output with its
    rank (``mpirun --tag-output``, as horovodrun runs it) then never split it, as they do with
    ``print``'s separate writes of text and newline when Python runs unbuffered."""
    sys.stdout.flush()
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


# How long a rank that found bad input waits for the others to find it too before it exits.
USER_ERROR_WAIT_S = 30.0


def wait_for_the_other_ranks(timeout_s: float = USER_ERROR_WAIT_S) -> None:
    """Under an MPI launch, wait (at most ``timeout_s``) until every rank has reached this point.

    Bad input that each rank checks for itself (a flag, a layout) is found by all of them, but
    not at the same moment: mpirun ends the whole job at the first non-zero exit, which cut off
    the line of a rank still starting up. A rank that errs alone (no other arrives) exits after
    the timeout: a bounded wait, never a hang. Without an MPI launch (one process, Gloo's
    horovodrun) there is nothing to wait for."""
    if int(os.environ.get("OMPI_COMM_WORLD_SIZE", "1")) < 2:
        return

    from mpi4py import MPI  # starts MPI if Horovod has not: cheap next to the import of torch

    if MPI.Is_finalized():
        return
    request = MPI.COMM_WORLD.Ibarrier()
    deadline = time.monotonic() + timeout_s
    while not request.Test():
        if time.monotonic() > deadline:
            return
        time.sleep(0.01)


# A rank's environment under horovodrun (Gloo), mpirun and srun.
RANK_VARIABLES = ("HOROVOD_RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK")


def env_rank() -> str:
    """This process's rank as its launcher set it (before or without Horovod)."""
    for var in RANK_VARIABLES:
        if var in os.environ:
            return os.environ[var]
    return "0"


