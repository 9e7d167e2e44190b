"""Quiet owns what a launch's first screen shows: start-up noise dropped, rank 0 untagged, a raw switch.

Two sources fill the first screen with lines that are not the recipe's:

* TensorFlow's C++ start-up lines (oneDNN, "Could not find cuda drivers", the CPU feature
  guard, absl's pre-init banner; and, on a host without NVIDIA's driver, the failed cuInit of
  its first look for GPUs), printed to file descriptor 2 while ``tensorflow`` is imported,
  before ``TF_CPP_MIN_LOG_LEVEL`` can take effect. :func:`quiet_stderr` catches descriptor 2
  around such an import and writes back every line that is not one of :data:`NOISE`: a real
  warning or error always comes through. ``horovodrun`` imports TensorFlow too, in the forked
  checks of what Horovod was built with, whose output Horovod means to mute but only mutes at
  Python's level.
* The launcher's tags: ``horovodrun`` starts ``mpirun --tag-output`` (every line
  ``[1,0]<stdout>:``) and, under Gloo, prefixes every worker's lines with ``[rank]<stdout>:``.
  Only rank 0 prints progress, so :func:`horovodrun` (this package's ``horovodrun`` command,
  Horovod's own launcher started through it) leaves rank 0's standard output untagged under
  Gloo (standard error keeps every rank's tag) and drops ``--tag-output`` under MPI, where
  Open MPI can only tag every line or none: there the core's error lines carry what matters
  (an error every rank agreed on is the same line from each; a bug's line names its rank,
  ``common.faults.ending``).

``HOROVOD_RECIPES_RAW_OUTPUT=1`` turns all of this off: everything shows, as Horovod and
TensorFlow print it.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import sys
import tempfile
from collections.abc import Iterator

RAW_OUTPUT_ENV = "HOROVOD_RECIPES_RAW_OUTPUT"

# Informational start-up lines only (absl's I-level lines, and the banner absl prints because
# TensorFlow logs before initialising it); W, E and F lines always come through.
NOISE = (
    re.compile(r"^WARNING: All log messages before absl::InitializeLog\(\) is called are written "
               r"to STDERR$"),
    re.compile(r"^I\d{4} [\d:. ]+\d+ (port|cudart_stub|cpu_feature_guard)\.cc:\d+\] "),
    re.compile(r"^To enable the following instructions: .*rebuild TensorFlow with the "
               r"appropriate compiler flags\.$"),
)


# On a host without NVIDIA's driver, TensorFlow's failed cuInit says only that there is no GPU
# (an E-level line nonetheless); where a driver is installed it is a real error and shows.
NO_GPU_NOISE = re.compile(r"^E\d{4} [\d:. ]+\d+ cuda_platform\.cc:\d+\] failed call to cuInit: ")


def nvidia_driver_present() -> bool:
    return os.path.exists("/proc/driver/nvidia") or os.path.exists("/dev/nvidiactl")


def raw_output() -> bool:
    return os.environ.get(RAW_OUTPUT_ENV, "") not in ("", "0")


def is_noise(line: str, gpu_host: bool | None = None) -> bool:
    line = line.rstrip("\r\n")
    if any(p.search(line) for p in NOISE):
        return True
    if gpu_host is None:
        gpu_host = nvidia_driver_present()
    return not gpu_host and bool(NO_GPU_NOISE.search(line))


@contextlib.contextmanager
def quiet_stderr() -> Iterator[None]:
    """Catch file descriptor 2 during the block (C++ libraries write there directly) and then
    write back every line that is not :data:`NOISE`, in order."""
    if raw_output():
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as caught:
        os.dup2(caught.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            caught.seek(0)
            gpu_host = nvidia_driver_present()
            kept = [ln for ln in caught.read().decode(errors="replace").splitlines(keepends=True)
                    if not is_noise(ln, gpu_host)]
            if kept:
                os.write(2, "".join(kept).encode())


def horovodrun() -> None:
    """The ``horovodrun`` command: Horovod's launcher, with its build checks quiet (and
    remembered: common.world.build_checks), rank 0's output untagged and a failed job's end in its
    message rather than a traceback (unless ``HOROVOD_RECIPES_RAW_OUTPUT=1``)."""
    from horovod.runner.launch import run_commandline

    if raw_output():
        return run_commandline()
    _quiet_launcher()
    try:
        return run_commandline()
    except Exception as e:  # noqa: BLE001 - Horovod ends a failed job by raising: its message,
        # which names the process and its exit code, without the launcher's traceback; on one
        # line (a wrapping hvd-launch holds it with the launcher's other reports)
        sys.stdout.flush()
        message = "; ".join(line.strip() for line in str(e).splitlines() if line.strip())
        sys.stderr.write(f"horovodrun: {type(e).__name__}: {message}\n")
        sys.exit(1)


def _quiet_launcher() -> None:
    import horovod.common.util as util
    import horovod.runner.gloo_run as gloo_run
    import horovod.runner.mpi_run as mpi_run

    from common.world.build_checks import remembered

    check = util._check_extension_lambda

    def quiet_check(*args, **kwargs):
        with quiet_stderr():  # the forked check inherits descriptor 2
            return check(*args, **kwargs)

    util._check_extension_lambda = remembered(quiet_check)
    # Gloo: each worker's pipes are copied line by line by safe_shell_exec.prefix_connection
    # (stdout and stderr each), prefixed with "[index]<stdout>:"; not rank 0's standard output.
    shell = gloo_run.safe_shell_exec
    prefix = shell.prefix_connection

    def rank_zero_stdout_untagged(src, dst, name, index, *args, **kwargs):
        return prefix(src, dst, name, None if (name, index) == ("stdout", 0) else index,
                      *args, **kwargs)

    shell.prefix_connection = rank_zero_stdout_untagged
    # Gloo's launcher reports each failed process on its standard output ("Process 1 exit with
    # status code 2."): on stderr, with the launcher's other reports, where a wrapping
    # hvd-launch holds them to the job's end.
    gloo_run.print = functools.partial(print, file=sys.stderr)
    mpi_run.os = _UntaggedMpirun(mpi_run.os)
    mpi_run.safe_shell_exec = _UntaggedMpirun(mpi_run.safe_shell_exec)


def untagged(command: str) -> str:
    """An ``mpirun`` command line without ``--tag-output``."""
    return re.sub(r"(^|\s)--tag-output(?=\s|$)", "", command, count=1)


class _UntaggedMpirun:
    """``os`` or ``safe_shell_exec`` as ``mpi_run`` uses them: the mpirun command it runs
    (``/bin/sh -c "mpirun ..."``) without ``--tag-output``."""

    def __init__(self, module) -> None:
        self._module = module

    def __getattr__(self, name):
        return getattr(self._module, name)

    def execve(self, path, args, env):
        return self._module.execve(path, [*args[:-1], untagged(args[-1])], env)

    def execute(self, command, *args, **kwargs):
        return self._module.execute(untagged(command), *args, **kwargs)
