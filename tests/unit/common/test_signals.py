"""A worker holds a stop signal from its first import of the core until its loop can agree on it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from common.base.errors import RANK_VARIABLES

ROOT = Path(__file__).resolve().parents[3]

# A worker's start, then two SIGTERMs: the first is held, the second ends it as SIGTERM would.
PROGRAM = """
import os, signal, sys
import common
from common.base import signals
os.kill(os.getpid(), signal.SIGTERM)
print("held", signals.take_held().name, signals.take_held(), flush=True)
os.kill(os.getpid(), signal.SIGTERM)
print("still alive", flush=True)
"""


def run(program: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in RANK_VARIABLES}
    return subprocess.run([sys.executable, "-c", program], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, env={**clean, "PYTHONPATH": str(ROOT), **env})


def test_a_worker_holds_the_first_stop_signal_and_dies_of_the_second():
    proc = run(PROGRAM, {"OMPI_COMM_WORLD_RANK": "1"})
    assert proc.stdout == "held SIGTERM None\n"  # taken once
    assert proc.returncode == -signal.SIGTERM


def test_outside_a_launcher_a_signal_does_what_it_always_did():
    proc = run(PROGRAM, {})
    assert proc.stdout == "" and proc.returncode == -signal.SIGTERM


def test_a_held_signal_no_loop_takes_ends_the_process_after_the_hold_limit():
    """A script without the training loop (a benchmark, a helper) still ends of its signal."""
    program = ("import os, signal, time\nimport common\nfrom common.base import signals\n"
               "signals.HOLD_LIMIT_S = 0.5\nos.kill(os.getpid(), signal.SIGTERM)\n"
               "print('held', flush=True)\ntime.sleep(20)\nprint('never taken, still alive')\n")
    proc = run(program, {"HOROVOD_RANK": "0"})
    assert proc.stdout == "held\n" and proc.returncode == -signal.SIGTERM


# A finished run, then a stop signal while the interpreter shuts down (after Python has put its
# handlers back to the default action): SLURM's time-limit warning just after the final line.
# CI-37 saw such a run end of SIGUSR1 and its job marked FAILED.
LATE_SIGNAL = """
import os, signal, time
from common.faults.ending import run_main

class LateSignal:  # deleted while the interpreter shuts down
    def __del__(self):
        os.kill(os.getpid(), signal.SIGUSR1)
        time.sleep(0.2)

late = LateSignal()
run_main(lambda: print("final: done", flush=True))
"""


def test_a_stop_signal_after_a_finished_run_leaves_its_exit_status_0():
    proc = run(LATE_SIGNAL, {"OMPI_COMM_WORLD_RANK": "0"})
    assert (proc.returncode, proc.stdout) == (0, "final: done\n"), proc.stderr[-2000:]
