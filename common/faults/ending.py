"""Ending owns how a worker process ends: one clear line per error, an exit status that says why, no hang.

Any error that escapes a recipe ends its process at once with ``os._exit`` (from
:func:`run_main`). Horovod's launchers (``horovodrun`` with Gloo, ``mpirun``) then stop the other
ranks, instead of those ranks waiting forever in an allreduce for the dead one. Errors only some
ranks can see are agreed first (``common.base.errors.agree``).
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable

from common.base.errors import AgreedError, UserError, env_rank, say, wait_for_the_other_ranks
from common.base.launch_dir import record_exit
from common.base.signals import ignore_after_the_run
from common.faults.preemption import Preempted


def run_main(main: Callable[[], object]) -> None:
    """Run a recipe's main; on any error print one line (and a traceback for bugs) and exit.

    (Importing the core registered the worker with a wrapping hvd-launch: common.base.signals.)"""
    try:
        main()
        ignore_after_the_run()  # a stop signal during the exit must not fail a finished run
        record_exit(0)
    except Preempted as e:  # agreed by every rank, rank 0 has said so: a clean, distinct exit
        _exit(e.exit_code)
    except UserError as e:
        say(f"error: {e}")
        try:
            e.sync() if isinstance(e, AgreedError) else wait_for_the_other_ranks()
        except Exception:  # noqa: BLE001 - another rank already gone: exit anyway
            pass
        _exit(2)
    except KeyboardInterrupt:
        say(f"rank {env_rank()}: interrupted")
        _exit(130)
    except SystemExit as e:
        if e.code not in (0, None):
            _exit(e.code if isinstance(e.code, int) else 1)
        raise
    except BaseException as e:  # noqa: BLE001 - a bug on one rank must end the whole job
        if _lost_a_rank(e):  # not this rank's fault: the failing rank said why; no traceback
            say(f"error on rank {env_rank()}: lost contact with the other ranks (Horovod shut down "
                f"after another rank failed or was killed; its message is above)")
            _exit(1)
        traceback.print_exc()
        say(f"error on rank {env_rank()}: {type(e).__name__}: {e}")
        _exit(1)


def _lost_a_rank(e: BaseException) -> bool:
    """Horovod's (or TensorFlow's wrapping of its) error when a peer died mid-collective."""
    text = f"{type(e).__name__}: {e}"
    return "HorovodInternalError" in text or "Horovod has been shut down" in text


def _exit(code: int) -> None:
    # os._exit skips Horovod's atexit shutdown, which would wait on the ranks still running.
    record_exit(code)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
