"""HVD launch owns wrapping a launcher (horovodrun, mpirun): stop signals reach the workers, none outlive it.

    hvd-launch horovodrun -np 4 python recipes/pytorch/mnist.py ...
    hvd-launch mpirun -np 4 -bind-to none python recipes/pytorch/mnist.py ...
    (the same as ``python -m common.launch.hvd_launch ...``)

What the launchers do on their own (measured with Horovod 0.28.1 and Open MPI 4.1, see the
docs/failures.md): Horovod's own ``horovodrun`` under MPI dies on SIGTERM and leaves ``mpirun`` and
every worker training, orphaned; SIGINT to it does nothing; ``mpirun`` turns SIGTERM/SIGINT into
a SIGTERM and then a SIGKILL to every rank a few seconds later, often before a checkpoint can be
written. So this wrapper:

* starts the launcher in its own session (a terminal's Ctrl-C reaches only this wrapper), and
  makes itself the subreaper of everything below it, so nothing it started can escape it;
* on SIGTERM, SIGINT or SIGUSR1 sends that same signal to each worker on this host (workers
  register themselves through ``HVD_LAUNCH_DIR``). One rank's signal is enough: the training
  loop makes every rank agree at the next step, write a checkpoint of it and exit 75
  (``common.faults.preemption``). A signal before any worker here has started waits for one;
  with no worker on this host, ``mpirun`` gets SIGUSR1, which Open MPI forwards to every rank;
* after ``--grace`` seconds, or on a second signal, kills everything below it;
* ends with one line and the workers' exit status (75: stopped, run again to resume; 124:
  stalled; 2: bad input; 1: a bug, traceback above), instead of horovodrun's own traceback;
* with ``--max-restarts N``, relaunches the same command after a failure a restart can fix (a
  worker killed, lost or crashed, a stall, a launcher that died): the run resumes from its
  newest checkpoint. Never after a clean end, a user error or a divergence (exit 2), or a stop
  (exit 75, a signal to the wrapper). A backoff doubles between restarts; only the restarts of
  the last ``--restart-window`` seconds count against N. With several hosts (``-H a:2,b:2``),
  a host that failed twice within the window is left out of the next launch when the other
  hosts' slots still hold ``--min-np`` workers (the run resumes on fewer workers). A failure
  is put on the host of the rank that was lost first: rank 0 records each rank it lost
  (``common.base.launch_dir.record_lost``); ranks fill the hosts in order, as horovodrun and
  mpirun place them.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from common.base.errors import say
from common.base.launch_dir import LAUNCH_DIR_ENV, RESTART_CAUSE_ENV, RESTART_ENV, lost_ranks
from common.faults.watchdog import EXIT_STALLED

FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)
MEANINGS = {0: "done", 1: "a worker failed (see its traceback above)",
            2: "bad input (see the error line above)",
            75: "stopped on a signal after writing a checkpoint; run the same command to resume",
            EXIT_STALLED: "a worker stalled (see the error line above)", 130: "interrupted",
            137: "killed (SIGKILL, or out of memory)"}
_PR_SET_CHILD_SUBREAPER = 36
# Exit statuses a relaunch cannot fix: done, bad input or divergence, stopped, interrupted.
NOT_RESTARTED = (0, 2, 75, 130)
MAX_BACKOFF_S = 300.0
# How long a stop signal waits for a worker on this host to register before it goes through
# mpirun (a worker registers as it first imports the core, well within this even on a busy host).
WAIT_FOR_WORKERS_S = 15.0


# --- the wrapper ---------------------------------------------------------------------------------

class Launch:
    """One launcher command under the wrapper; ``name`` opens the wrapper's own lines."""

    def __init__(self, command: list[str], grace: float, name: str = "hvd-launch",
                 env: dict[str, str] | None = None) -> None:
        self.command, self.grace, self.name, self.extra_env = command, grace, name, env or {}
        self.relay = _StderrRelay(name)
        self.folder = tempfile.mkdtemp(prefix="hvd-launch-")
        self.stopping_since: float | None = None
        self.forwarded: signal.Signals | None = None
        self.child: subprocess.Popen | None = None
        self.lost: list[int] = []  # the ranks lost in this launch, the first lost first
        self.pending: signal.Signals | None = None  # a stop signal no worker here had yet

    def run(self) -> int:
        _become_subreaper()
        env = dict(os.environ, **self.extra_env, **{LAUNCH_DIR_ENV: self.folder})
        for sig in FORWARDED:
            signal.signal(sig, self._on_signal)
        try:
            self.child = subprocess.Popen(self.command, env=env, stderr=subprocess.PIPE,
                                          start_new_session=True)
        except OSError as e:
            say(f"{self.name}: cannot start {self.command[0]!r}: {e.strerror}")
            return 127
        relay = threading.Thread(target=self.relay.copy, args=(self.child.stderr,), daemon=True)
        relay.start()
        while self.child.poll() is None:
            if self.stopping_since and time.monotonic() - self.stopping_since > self.grace:
                say(f"{self.name}: the workers did not stop within --grace {self.grace:g} s; "
                     "killing them")
                self._kill_all()
            self._pass_on_pending()
            self._end_silent()
            time.sleep(0.2)
        relay.join(5)
        _reap()
        leftovers = self._kill_all()  # whatever the launcher left behind (now our children)
        time.sleep(0.1)
        _reap()
        code = self._exit_code()
        self.lost = self._lost() if code else []
        # The launcher's report of a failed process says nothing the workers' own line did not
        # after a clean stop or a user error; for anything else it helps, and shows.
        self.relay.end(show_reports=code not in (2, 75, EXIT_STALLED))
        if leftovers:
            say(f"{self.name}: killed {leftovers} process(es) the launcher left running")
        if self.lost and code not in (2, 75, EXIT_STALLED):  # a stall's verdict named it already
            slots = Slots.of(self.command)
            host = slots.host_of(self.lost[0]) if slots else None
            say(f"{self.name}: lost contact with rank {self.lost[0]}" + (f" on {host}" if host else "")
                + " first: its process ended without a word (killed, out of memory, or its host "
                  "went down)")
        if code:
            say(f"{self.name}: job ended with exit status {code}: "
                 f"{MEANINGS.get(code, 'see the messages above')}")
        shutil.rmtree(self.folder, ignore_errors=True)
        return code

    def _on_signal(self, signum, frame) -> None:
        sig = signal.Signals(signum)
        if self.stopping_since is not None:  # a second signal: stop now
            say(f"{self.name}: {sig.name} again: killing the job")
            self._kill_all()
            return
        self.stopping_since, self.forwarded = time.monotonic(), sig
        if not self._forward(sig):
            self.pending = sig
            say(f"{self.name}: {sig.name}: no worker on this host has started yet; waiting for "
                f"one (at most {WAIT_FOR_WORKERS_S:g} s) to pass it on")

    def _forward(self, sig: signal.Signals) -> bool:
        """Send ``sig`` to the workers on this host, if any has registered (from the first import
        of the core on, a worker holds a stop signal for its loop: common.base.signals)."""
        workers = self._workers()
        for pid in workers:
            _signal(pid, sig)
        if workers:
            say(f"{self.name}: {sig.name} sent to {len(workers)} worker(s) on this host; they "
                 f"stop at the next step with a checkpoint (a second signal kills them)")
        return bool(workers)

    def _pass_on_pending(self) -> None:
        """A signal that came before any worker here registered: to the first ones that do, or,
        when none has after WAIT_FOR_WORKERS_S (every worker on other hosts), through mpirun."""
        sig = self.pending
        if sig is None or self._forward(sig):
            self.pending = None
            return
        if time.monotonic() - self.stopping_since < WAIT_FOR_WORKERS_S:
            return
        self.pending = None
        mpirun = [p for p in self._descendants() if _name(p) in ("mpirun", "orterun", "prterun")]
        if mpirun:  # workers only on other hosts: Open MPI forwards SIGUSR1 to every rank
            _signal(mpirun[0], signal.SIGUSR1)
            say(f"{self.name}: {sig.name}: no worker on this host; SIGUSR1 sent through mpirun")
        else:  # no worker ever started: nothing to save
            for pid in self._descendants():
                _signal(pid, signal.SIGTERM)

    def _end_silent(self) -> None:
        """Kill the workers on this host that the stall watchdog's verdict named silent: a
        stopped or frozen process saves nothing and ends only by SIGKILL, which Gloo's launcher
        sends only after its own grace periods (about 10 s more)."""
        silent = set(lost_ranks(self.folder, "silent"))
        if not silent or EXIT_STALLED not in self._exits():  # after the verdict's rank ended
            return
        for path in Path(self.folder).glob("*.worker"):
            with contextlib.suppress(OSError, ValueError):
                if int(path.read_text()) in silent and _alive(int(path.stem)):
                    _signal(int(path.stem), signal.SIGKILL)

    def _workers(self) -> list[int]:
        pids = []
        for path in Path(self.folder).glob("*.worker"):
            pid = int(path.stem)
            if not Path(self.folder, f"{pid}.exit").exists() and _alive(pid):
                pids.append(pid)
        return pids

    def _descendants(self) -> list[int]:
        import psutil  # a Horovod dependency

        try:
            return [p.pid for p in psutil.Process().children(recursive=True)]
        except psutil.Error:
            return []

    def _kill_all(self) -> int:
        pids = self._descendants()
        for pid in pids:
            _signal(pid, signal.SIGKILL)
        return len(pids)

    def _lost(self) -> list[int]:
        """The ranks lost: those rank 0 recorded, else (rank 0 itself lost) the ranks on this
        host that ended without recording how while another one did."""
        recorded = lost_ranks(self.folder)
        if recorded:
            return recorded
        folder = Path(self.folder)
        ended = {p.stem for p in folder.glob("*.exit")}
        if not ended:  # every rank here was killed together: the launcher ended them
            return []
        ranks = []
        for path in folder.glob("*.worker"):
            with contextlib.suppress(OSError, ValueError):
                if path.stem not in ended:
                    ranks.append(int(path.read_text()))
        return sorted(ranks)

    def _exits(self) -> list[int]:
        """The exit statuses the workers on this host recorded, the first first."""
        exits = []
        for path in Path(self.folder).glob("*.exit"):
            try:
                code, _, when = path.read_text().split()
                exits.append((float(when), int(code)))
            except (OSError, ValueError):
                continue
        return [c for _, c in sorted(exits)]

    def _exit_code(self) -> int:
        """The workers' verdict if they left one, else the launcher's own status."""
        codes = self._exits()
        if self.forwarded is not None and codes and all(c == 75 for c in codes):
            return 75
        failed = [c for c in codes if c not in (0, 75)] or [c for c in codes if c]
        if failed:
            return failed[0]  # the first worker to fail: the others were ended because of it
        status = self.child.returncode
        return 128 - status if status < 0 else status


def run_with_restarts(command: list[str], grace: float, max_restarts: int, window: float,
                      backoff: float, min_np: int | None = None, name: str = "hvd-launch") -> int:
    """:class:`Launch` the command; after a failure a restart can fix, relaunch it (at most
    ``max_restarts`` times within ``window`` seconds, waiting ``backoff`` seconds, doubled at
    each restart of the window). A host that failed twice within the window is left out when
    the others' slots hold ``min_np`` workers (None: the command's own count). Each relaunch
    gets its number and cause in the environment (``common.base.launch_dir.restart``): the run
    writes a ``restart`` record. Returns the last launch's exit status."""
    restarts: list[float] = []  # when each restart within the window happened
    failed: dict[str, list[float]] = {}  # when each host failed
    attempt, cause = 0, ""
    while True:
        env = {RESTART_ENV: str(attempt), RESTART_CAUSE_ENV: cause} if attempt else {}
        launch = Launch(command, grace, name, env)
        code = launch.run()
        if code in NOT_RESTARTED or launch.forwarded is not None or not max_restarts:
            return code
        now = time.monotonic()
        restarts = [t for t in restarts if now - t < window]
        if len(restarts) >= max_restarts:
            say(f"{name}: not restarting: {len(restarts)} restart(s) in the last {window:g} s "
                f"already (--max-restarts {max_restarts})")
            return code
        restarts.append(now)
        attempt += 1
        delay = min(backoff * 2 ** (len(restarts) - 1), MAX_BACKOFF_S)
        cause = f"exit status {code}: {MEANINGS.get(code, 'see the messages above')}"
        slots = Slots.of(command)
        culprit = slots.host_of(launch.lost[0]) if slots and launch.lost else None
        if culprit:
            cause += f"; rank {launch.lost[0]} on {culprit} lost"
            failed[culprit] = [t for t in failed.get(culprit, []) if now - t < window] + [now]
            if len(failed[culprit]) >= 2:
                command = _leave_out(command, slots, culprit, window, min_np, name)
        say(f"{name}: restart {attempt} ({len(restarts)} of at most {max_restarts} in "
            f"{window:g} s) after {cause}; relaunching in {delay:g} s, from the newest checkpoint")
        if _signalled_within(delay):
            say(f"{name}: stopped by a signal before the relaunch")
            return code


def _leave_out(command: list[str], slots: Slots, host: str, window: float, min_np: int | None,
               name: str) -> list[str]:
    """The command without ``host`` if the other hosts' slots still hold ``min_np`` workers
    (one line either way); else the command as it was."""
    others = [(h, n) for h, n in slots.hosts if h != host]
    room = sum(n for _, n in others)
    need = slots.np if min_np is None else min_np
    if not others or room < need:
        say(f"{name}: {host} failed twice in {window:g} s, but the other hosts have {room} "
            f"slot(s) for the {need} worker(s) needed (hvd-launch --min-np); keeping it")
        return command
    np = min(slots.np, room)
    hosts = ",".join(f"{h}:{n}" for h, n in others)
    say(f"{name}: leaving out {host}: it failed twice in {window:g} s; the next launch runs "
        f"{np} worker(s) on {hosts}")
    return slots.rewrite(command, np, hosts)


# The launcher options the wrapper reads and rewrites (horovodrun's and mpirun's spellings).
_NP_FLAGS = ("-np", "-n", "--np", "--num-proc")
_HOST_FLAGS = ("-H", "--hosts", "--host", "-host")


@dataclass
class Slots:
    """A launcher command's process count and host list (``-np 4 -H a:2,b:2``)."""

    np: int
    hosts: list[tuple[str, int]]  # (host, slots), in the command's order
    np_at: int  # where the count's value is in the command
    hosts_at: int

    @classmethod
    def of(cls, command: list[str]) -> Slots | None:
        """The command's slots; None without both a count and a host list (one host)."""
        found: dict[str, tuple[int, str]] = {}
        for i, word in enumerate(command[:-1]):
            if i and Path(word).name.startswith("python"):  # the program: its own flags follow
                break
            for key, flags in (("np", _NP_FLAGS), ("hosts", _HOST_FLAGS)):
                if word in flags and key not in found:
                    found[key] = (i + 1, command[i + 1])
        if len(found) < 2:
            return None
        try:
            np = int(found["np"][1])
            hosts = [(h, int(n or 1)) for h, _, n in
                     (spec.partition(":") for spec in found["hosts"][1].split(",") if spec)]
        except ValueError:
            return None
        return cls(np, hosts, found["np"][0], found["hosts"][0])

    def host_of(self, rank: int) -> str | None:
        """The host of ``rank``: ranks fill the hosts' slots in order."""
        for host, n in self.hosts:
            if rank < n:
                return host
            rank -= n
        return None

    def rewrite(self, command: list[str], np: int, hosts: str) -> list[str]:
        command = list(command)
        command[self.np_at], command[self.hosts_at] = str(np), hosts
        return command


def _signalled_within(seconds: float) -> bool:
    """Wait ``seconds``; True as soon as a stop signal arrives (the user ends the job)."""
    event = threading.Event()
    for sig in FORWARDED:
        signal.signal(sig, lambda *_: event.set())
    return event.wait(seconds)


_TRACEBACK = "Traceback (most recent call last):"
_EXCEPTION = re.compile(r"^[A-Za-z_.]*(Error|Exception|Interrupt)\b:?")


# What a launcher prints after a process exits non-zero: Open MPI's boxes (between lines of
# dashes), and Horovod's Gloo launcher's lines (each process that failed, the others ended, and
# its closing message, one line through common.world.quiet.horovodrun).
_RULE = "-" * 74  # Open MPI's help-message rule, a whole line
_REPORTS = ("Primary job  terminated normally, but", "mpirun detected that one or more processes "
            "exited with non-zero status")
_REPORT_LINE = re.compile(r"horovodrun: RuntimeError: Horovod detected that one or more processes "
                          r"exited with non-zero status|Process \d+ exit with status code -?\d+\.$"
                          r"|Terminating remaining workers after failure of Process \d+\.$")


class _StderrRelay:
    """Copies the launcher's stderr as it comes, replacing horovodrun's own traceback (a frame
    in horovod/runner) by its message, and holding the launcher's reports of a failed process
    (:data:`_REPORTS`) until the job's end (:meth:`end`). Workers' output is never held back."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.reports: list[bytes] = []
        self.out = sys.stderr.buffer

    def copy(self, stream) -> None:
        held: list[bytes] = []  # a traceback, or a box, while it is being read
        box = False
        for line in iter(stream.readline, b""):
            text = line.decode(errors="replace")
            if box or (not held and text.rstrip("\r\n") == _RULE):
                held.append(line)
                box = True
                if len(held) > 40:  # not a box after all: nothing is held back for long
                    self._write(held)
                    held, box = [], False
                elif len(held) > 1 and text.rstrip("\r\n") == _RULE:  # the box is closed
                    body = b"".join(held).decode(errors="replace")
                    if any(r in body for r in _REPORTS):
                        self.reports.extend(held)
                    else:
                        self._write(held)
                    held, box = [], False
                continue
            if _REPORT_LINE.match(text.rstrip("\r\n")):
                self.reports.append(line)
                continue
            if held or text.startswith(_TRACEBACK):
                held.append(line)
                if not _EXCEPTION.match(text):
                    continue
                if any(b"horovod/runner/" in h for h in held):
                    message = text.split(":", 1)[1].strip() if ":" in text else text.strip()
                    self._write([f"{self.name}: the launcher says: {message}\n".encode()])
                else:
                    self._write(held)
                held = []
                continue
            self._write([line])
        self._write(held)

    def end(self, show_reports: bool) -> None:
        """The job is over: show the held reports, or drop them."""
        if show_reports:
            self._write(self.reports)
        self.reports = []

    def _write(self, lines: list[bytes]) -> None:
        self.out.writelines(lines)
        self.out.flush()


def _reap() -> None:
    """Collect processes that were reparented to this subreaper and have exited."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _become_subreaper() -> None:
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: orphans cannot be collected
        pass


def _signal(pid: int, sig: signal.Signals) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def _name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="hvd-launch", description="Run a launcher command (horovodrun, mpirun, ...) so that "
        "SIGTERM/SIGINT/SIGUSR1 stop its workers cleanly at a checkpoint and none is orphaned.")
    parser.add_argument("--grace", type=float, default=120.0,
                        help="seconds the workers get to stop after a signal before they are "
                             "killed")
    parser.add_argument("--max-restarts", type=int, default=0, metavar="N",
                        help="relaunch the command, which resumes from its newest checkpoint, "
                             "after a failure a restart can fix (a worker killed or crashed, a "
                             "stall, a launcher that died), at most N times within "
                             "--restart-window; never after exit 0, 2 (bad input, divergence) "
                             "or 75 (stopped)")
    parser.add_argument("--restart-window", type=float, default=3600.0, metavar="S",
                        help="only the restarts of the last S seconds count against "
                             "--max-restarts (default 3600)")
    parser.add_argument("--restart-backoff", type=float, default=5.0, metavar="S",
                        help="seconds before a relaunch, doubled at each restart of the window "
                             f"(default 5, at most {MAX_BACKOFF_S:g})")
    parser.add_argument("--min-np", type=int, default=None, metavar="N",
                        help="with several hosts (-H a:2,b:2), a host that failed twice within "
                             "--restart-window is left out of the next launch if the other "
                             "hosts still have N slots (the run resumes on fewer workers); "
                             "default: the command's own -np (never fewer workers)")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the launcher command line")
    args = parser.parse_args(argv)
    if not args.command:
        parser.error("give the launcher command, e.g. hvd-launch horovodrun -np 2 python "
                     "recipes/pytorch/mnist.py")
    if args.max_restarts < 0 or args.restart_window <= 0 or args.restart_backoff < 0:
        parser.error("--max-restarts must be >= 0, --restart-window > 0, --restart-backoff >= 0")
    if args.min_np is not None and args.min_np < 1:
        parser.error("--min-np must be >= 1")
    return run_with_restarts(args.command, args.grace, args.max_restarts, args.restart_window,
                             args.restart_backoff, args.min_np)


def horovodrun() -> int:
    """The ``horovodrun`` command setup installs: Horovod's launcher (quietly:
    ``common.world.quiet.horovodrun``) under this wrapper, so that Ctrl-C and SIGTERM stop every
    worker at one step with a checkpoint and a clean stop or a user error ends without the
    launcher's report. Run directly where a wrapper already runs it (``hvd-launch horovodrun
    ...``), for ``HOROVOD_RECIPES_RAW_OUTPUT=1``, and for the commands that start no job."""
    from common.world.quiet import horovodrun as launcher
    from common.world.quiet import raw_output

    args = sys.argv[1:]
    no_job = not args or bool({"-h", "--help", "-v", "--version", "-cb", "--check-build"} & set(args))
    if os.environ.get(LAUNCH_DIR_ENV) or raw_output() or no_job:
        return launcher()
    inner = [sys.executable, "-c", "import sys; sys.argv[0] = 'horovodrun'; "
             "from common.world.quiet import horovodrun; sys.exit(horovodrun())", *args]
    return Launch(inner, grace=120.0, name="horovodrun").run()


if __name__ == "__main__":
    sys.exit(main())
