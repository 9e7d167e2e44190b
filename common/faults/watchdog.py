"""Watchdog owns --stall-timeout: a rank that stops making progress ends the whole job, named.

Why Horovod's own stall check cannot do this: its stall inspector runs inside the coordinator's
negotiation cycle on rank 0, which first gathers every rank's list of ready tensors. A rank that
is stopped (SIGSTOP, a frozen node) or stuck outside Horovod never sends its list, so rank 0
waits inside that gather forever (Open MPI busy-polls it: 100% CPU, no output) and never reaches
the check; ``HOROVOD_STALL_SHUTDOWN_TIME_SECONDS`` changes nothing. The inspector only catches
ranks that are alive in Horovod but did not submit one tensor. Under Gloo the gather gives up
after Gloo's own timeout instead (30 s), naming nobody.

So the watchdog works beside Horovod, on its own channel: every worker's thread sends rank 0 a
heartbeat over TCP each second with the steps it has done and how long ago it last made
progress (:func:`beat`, called by the training loop). Rank 0's thread watches them all. When any
rank has made no progress for ``--stall-timeout`` seconds, rank 0 names the rank(s) that stopped
answering (or, if all still answer, every rank's step), tells every rank to stop, and each prints
that line and exits with :data:`EXIT_STALLED`; the launcher then ends the stalled rank too.
Workers that lose rank 0 itself say so and exit the same way. Threads keep running while the
main thread waits in a collective (Horovod's waits release the GIL). A worker says goodbye as
it closes; rank 0 records a rank whose connection drops without one, or that it names silent,
for a wrapping ``hvd-launch`` (``common.base.launch_dir.record_lost``): a dead process's socket
closes at once, even on another host, before the launcher has ended the job.

Before training, from right after Horovod's start (``common.frameworks.backend.start_horovod``),
the watchdog already runs in its start-up mode: building the model, reading data and the
restore make no steps, so only a rank that stops answering at all (a stopped or frozen
process) is judged; :meth:`StallWatchdog.training` turns progress on when the loop starts. The
two waits before its channel exists, Horovod's own start and the watchdog's allgather, are
bounded by :func:`bounded`.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from common.base.errors import env_rank, say
from common.base.launch_dir import record_exit, record_lost

EXIT_STALLED = 124  # as coreutils' timeout: the job ran out of time waiting for a rank
_CONNECT_S = 20.0  # how long a worker tries to reach rank 0 at start

_active: StallWatchdog | None = None


def active() -> StallWatchdog | None:
    """The watchdog running in this process, if any."""
    return _active


@contextlib.contextmanager
def bounded(what: str, timeout: float | None, exit_fn: Callable[[int], None] = os._exit):
    """A wait for every rank before the watchdog's channel exists (Horovod's start, the
    watchdog's own allgather): one that lasts more than ``timeout`` seconds ends this rank with
    one line and :data:`EXIT_STALLED` (the launcher then ends the others)."""
    if not timeout:
        yield
        return
    done = threading.Event()

    def watch() -> None:
        if not done.wait(timeout):
            say(f"error on rank {env_rank()}: stalled: {what} waited {timeout:g} s (--stall-timeout) "
                "for a rank that never came (stopped, hung, or far slower to start); ending the job")
            if exit_fn is os._exit:
                record_exit(EXIT_STALLED)
            exit_fn(EXIT_STALLED)

    threading.Thread(target=watch, name="start-watchdog", daemon=True).start()
    try:
        yield
    finally:
        done.set()


def beat(step: int | None = None) -> None:
    """This rank made progress (a step, an evaluation batch, a checkpoint written)."""
    if _active is not None:
        _active.beat(step)


@dataclass
class _Peer:
    host: str
    step: int = 0
    age: float = 0.0  # seconds since its last progress, as it last reported
    heard: float | None = None  # monotonic time of its last heartbeat (None: never connected)


class StallWatchdog:
    """Start with :meth:`start` on every rank (a collective), stop with :meth:`close`."""

    def __init__(self, timeout: float, rank: int, size: int,
                 exit_fn: Callable[[int], None] = os._exit) -> None:
        self.timeout, self.rank, self.size = timeout, rank, size
        self.interval = min(1.0, timeout / 10)
        # A rank that sent nothing for this long is not answering (its heartbeats are 1 s apart).
        self.silent_after = min(timeout / 2, 10 * self.interval)
        self._exit = exit_fn
        self._last = time.monotonic()
        self._step = 0
        self._rank0_heard = time.monotonic()
        self._stop = threading.Event()
        self._sel = selectors.DefaultSelector()
        self._server: socket.socket | None = None
        self._conn: socket.socket | None = None
        self.peers: dict[int, _Peer] = {}
        self._ranks: dict[socket.socket, int] = {}  # rank 0: each worker's connection, its rank
        self._closed: set[int] = set()  # rank 0: the ranks that said goodbye
        self.verdict: str | None = None
        self.judging_progress = True  # False in the start-up mode (:meth:`start` early)

    # -- setup ---------------------------------------------------------------------------------

    def start(self, allgather_object: Callable[[object], list],
              starting: bool = False) -> StallWatchdog:
        """Exchange hosts and rank 0's address (one allgather, :func:`bounded`), connect, start
        the thread. ``starting``: in the start-up mode, judging only ranks that stop answering
        until :meth:`training`."""
        global _active
        self.judging_progress = not starting
        host = socket.gethostname()
        address = None
        if self.rank == 0:
            self._server = socket.create_server(("", 0), backlog=max(self.size, 8))
            self._server.setblocking(False)
            self._sel.register(self._server, selectors.EVENT_READ, "accept")
            address = (host, self._server.getsockname()[1], _addresses(host))
        with bounded("the stall watchdog's start", self.timeout, self._exit):
            everyone = allgather_object((host, address))
        hosts = [h for h, _ in everyone]
        self.peers = {r: _Peer(h) for r, h in enumerate(hosts)}
        self.peers[self.rank].heard = time.monotonic()
        if self.rank != 0:
            self._connect(everyone[0][1], same_host=hosts[0] == host)
        _active = self
        threading.Thread(target=self._run, name="stall-watchdog", daemon=True).start()
        return self

    def _connect(self, address, same_host: bool) -> None:
        host, port, ips = address
        candidates = (["127.0.0.1"] if same_host else []) + [host, *ips]
        deadline = time.monotonic() + _CONNECT_S
        error: OSError | None = None
        while time.monotonic() < deadline:
            for target in candidates:
                try:
                    self._conn = socket.create_connection((target, port), timeout=2)
                    # the first heartbeat at once: from now on rank 0 knows this rank answers
                    self._conn.sendall(f"{self.rank} {self._step} 0.000\n".encode())
                    self._conn.setblocking(False)
                    self._sel.register(self._conn, selectors.EVENT_READ, "rank0")
                    self._rank0_heard = time.monotonic()
                    return
                except OSError as e:
                    error = e
            time.sleep(0.5)
        say(f"warning: rank {self.rank}: stall watchdog cannot reach rank 0 at {host}:{port} "
             f"({error}); this rank ends the job by itself if it stalls for "
             f"{self.timeout + 3 * self.silent_after:g} s")

    def close(self) -> None:
        global _active
        if _active is self:
            _active = None
        self._stop.set()
        if self._conn is not None:  # goodbye: this rank ends on purpose, it is not lost
            with contextlib.suppress(OSError):
                self._conn.sendall(f"bye {self.rank}\n".encode())

    def beat(self, step: int | None = None) -> None:
        self._last = time.monotonic()
        if step is not None:
            self._step = step

    def training(self) -> None:
        """The loop starts: from now on a rank without progress for the timeout is judged."""
        self._last = time.monotonic()
        self.judging_progress = True

    def _age(self, now: float) -> float:
        """Seconds since this rank's last progress (0 in the start-up mode: not judged)."""
        return now - self._last if self.judging_progress else 0.0

    # -- the thread ----------------------------------------------------------------------------

    def _run(self) -> None:
        buffers: dict[socket.socket, bytes] = {}
        next_beat = last_turn = quiet_until = 0.0
        while not self._stop.is_set():
            events = self._sel.select(timeout=self.interval / 2)
            now = time.monotonic()
            if last_turn and now - last_turn > self.silent_after:
                # This process was frozen itself (SIGSTOP, then SIGCONT from a launcher ending
                # the job): what it last heard is old news, not the others' silence.
                for peer in self.peers.values():
                    peer.heard = now if peer.heard is not None else None
                self._rank0_heard = now
                quiet_until = now + self.silent_after  # judge nothing: the launcher ends us
            last_turn = now
            for key, _ in events:
                if key.data == "accept":
                    with contextlib.suppress(OSError):
                        conn, _ = self._server.accept()
                        conn.setblocking(False)
                        self._sel.register(conn, selectors.EVENT_READ, "worker")
                    continue
                try:
                    data = key.fileobj.recv(4096)
                except OSError:
                    data = b""
                if not data:  # the other end is gone (the launcher is ending the job)
                    self._sel.unregister(key.fileobj)
                    key.fileobj.close()
                    if key.data == "rank0":
                        self._conn = None
                    rank = self._ranks.pop(key.fileobj, None)
                    if rank is not None and rank not in self._closed and not self._stop.is_set():
                        record_lost(rank, "disconnected")
                    continue
                buffers[key.fileobj] = buffers.get(key.fileobj, b"") + data
                *lines, buffers[key.fileobj] = buffers[key.fileobj].split(b"\n")
                for line in lines:
                    self._receive(key, line.decode())
            if self._stop.is_set():
                break
            now = time.monotonic()
            if now >= next_beat and now >= quiet_until:
                next_beat = now + self.interval
                if self.rank == 0:
                    self._judge(now)
                else:
                    self._heartbeat(now)

    def _receive(self, key, line: str) -> None:
        if key.data == "worker":  # rank 0 hears "rank step age", or "bye rank" at a worker's end
            if line.startswith("bye "):
                self._closed.add(int(line[4:]))
                return
            rank, step, age = line.split()
            self._ranks[key.fileobj] = int(rank)
            peer = self.peers[int(rank)]
            peer.step, peer.age, peer.heard = int(step), float(age), time.monotonic()
            with contextlib.suppress(OSError):
                key.fileobj.sendall(b"ok\n")
        else:  # a worker hears rank 0: "ok" or "stop <why>"
            self._rank0_heard = time.monotonic()
            if line.startswith("stop "):
                self._end(line[5:])

    def _heartbeat(self, now: float) -> None:
        age = self._age(now)
        if self._conn is not None:
            with contextlib.suppress(OSError):
                self._conn.sendall(f"{self.rank} {self._step} {age:.3f}\n".encode())
            silent = now - self._rank0_heard
            judged = age if self.judging_progress else silent
            if judged > self.timeout and silent > self.silent_after:
                head = (f"stalled: no progress for {age:.0f} s" if self.judging_progress else
                        "stalled before training started")
                self._end(f"{head} (--stall-timeout {self.timeout:g}); rank 0 on "
                          f"{self.peers[0].host} stopped answering {silent:.0f} s ago")
        if age > self.timeout + 3 * self.silent_after:  # no verdict came: rank 0 cannot judge
            self._end(f"stalled: rank {self.rank} on {self.peers[self.rank].host} made no "
                      f"progress for {age:.0f} s (--stall-timeout {self.timeout:g})")

    def _judge(self, now: float) -> None:
        me = self.peers[0]
        me.step, me.age, me.heard = self._step, self._age(now), now
        ages = {r: p.age + (now - p.heard) for r, p in self.peers.items() if p.heard is not None}
        if max(ages.values()) <= self.timeout:
            return
        message = self.stall_message(now)
        for rank in self._silent(now):
            record_lost(rank, "silent")
        stop = f"stop {message}\n".encode()
        for key in list(self._sel.get_map().values()):
            if key.data == "worker":
                with contextlib.suppress(OSError):
                    key.fileobj.setblocking(True)
                    key.fileobj.settimeout(1)
                    key.fileobj.sendall(stop)
        self._end(message, linger=1.0)

    def stall_message(self, now: float) -> str:
        """Rank 0's verdict: who stopped answering, or where every rank stands."""
        stalled = max(p.age + (now - p.heard) for p in self.peers.values() if p.heard is not None)
        head = (f"stalled: no progress for {stalled:.0f} s" if self.judging_progress else
                "stalled before training started") + f" (--stall-timeout {self.timeout:g}); "
        silent = [(r, self.peers[r]) for r in self._silent(now)]
        known = [(r, p) for r, p in self.peers.items() if p.heard is not None]
        if silent:
            # A heartbeat comes each second: the silent rank's last one may be some steps old;
            # rank 0's own step is where the job stands.
            where = ("(last heard at step {})" if self.judging_progress
                     else "before training started")
            names = "; ".join(
                f"rank {r} on {p.host} " + (f"stopped answering {now - p.heard:.0f} s ago "
                                            + where.format(p.step) if p.heard is not None
                                            else "never reached the watchdog")
                for r, p in silent)
            waits = f"; rank 0 waits after step {self._step}" if self.judging_progress else ""
            return head + names + waits + "; ending the job"
        low = min(p.step for _, p in known)
        behind = [(r, p) for r, p in known if p.step == low]
        if len(behind) < len(known):
            names = ", ".join(f"rank {r} on {p.host}" for r, p in behind)
            return head + f"{names} stuck at step {low} while the others are ahead; ending the job"
        return head + (f"every rank answers but none finished a step since step {low} "
                       "(a deadlock, or a step slower than the timeout); ending the job")

    def _silent(self, now: float) -> list[int]:
        """Rank 0: the other ranks that stopped answering (or never answered)."""
        return [r for r, p in self.peers.items()
                if r != 0 and (p.heard is None or now - p.heard > self.silent_after)]

    def _end(self, message: str, linger: float = 0.0) -> None:
        self.verdict = message
        self._stop.set()  # one verdict per rank
        say(f"error: {message}")
        if linger:
            time.sleep(linger)  # let the other ranks read the stop before this rank goes
        if self._exit is os._exit:
            record_exit(EXIT_STALLED)
        self._exit(EXIT_STALLED)


def _addresses(host: str) -> list[str]:
    with contextlib.suppress(OSError):
        return sorted({info[4][0] for info in socket.getaddrinfo(host, None, socket.AF_INET)})
    return []
