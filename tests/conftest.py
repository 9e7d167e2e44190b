"""Suite-wide hooks: the lanes read from each test's folder, tests side by side with the timing-
sensitive ones alone, and the fault-injection summary line.

tests/unit/ is the unit lane (no worker process); everything under tests/jobs/ launches real
jobs and is marked ``multiprocess``. Helpers to launch jobs live in tests/support.py.

``make test`` runs the suite in two pytest-xdist processes: most job tests spend part of their
time waiting (process start-up, a launcher's rendezvous, a fault being noticed), which the other
process fills. A test marked ``serial`` (stall and signal timing, load balance) runs alone: it
waits until the test beside it has ended, and no other test starts until it has (a
writer-preferring lock shared by the xdist processes); a test whose timing matters only while
one job runs takes the ``alone`` fixture for that part, and runs its reference and rerun jobs
beside other tests. The smoke runs of the benchmarks assert what they measure, never how fast,
and run beside other tests. Each file
runs in one process (``--dist loadfile``), so a module's reference run is made once; a session
reference that several files read is made once for both (tests.support.shared_run).
"""

from __future__ import annotations

import contextlib
import fcntl
import sys
import tempfile
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parent / "unit"
def pytest_collection_modifyitems(config, items):
    for item in items:
        if UNIT not in Path(str(item.path)).parents:
            item.add_marker(pytest.mark.multiprocess)


class _Alone:
    """A lock across the xdist processes: shared by ordinary tests, exclusive for ``serial``
    ones, which also close a turnstile so that no new test starts while they wait or run."""

    def __init__(self, uid: str) -> None:
        folder = Path(tempfile.gettempdir()) / f"horovod-recipes-tests-{uid}"
        folder.mkdir(exist_ok=True)
        self.turnstile = open(folder / "turnstile", "a")  # noqa: SIM115 - held for the session
        self.running = open(folder / "running", "a")  # noqa: SIM115

    def enter(self, serial: bool) -> None:
        fcntl.flock(self.turnstile, fcntl.LOCK_EX)
        fcntl.flock(self.running, fcntl.LOCK_EX if serial else fcntl.LOCK_SH)
        if not serial:
            fcntl.flock(self.turnstile, fcntl.LOCK_UN)

    def leave(self, serial: bool) -> None:
        fcntl.flock(self.running, fcntl.LOCK_UN)
        if serial:
            fcntl.flock(self.turnstile, fcntl.LOCK_UN)


def pytest_configure(config):
    workerinput = getattr(config, "workerinput", None)  # set in an xdist worker process
    config._alone = _Alone(workerinput["testrunuid"]) if workerinput else None


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """Around the whole test, its fixtures' set-up and tear-down included (a reference run
    made for it is a job like any other)."""
    alone = item.config._alone
    serial = item.get_closest_marker("serial") is not None
    if alone is None:
        yield
        return
    alone.enter(serial)
    try:
        yield
    finally:
        alone.leave(serial)


@pytest.fixture
def alone(request):
    """``with alone(): ...``: that part of the test runs alone, like a ``serial`` test, and the
    rest (its reference runs, its resumed rerun) beside other tests. For a test whose timing
    matters only while one job runs (a fault injected and the job's end)."""
    lock = request.config._alone

    @contextlib.contextmanager
    def part():
        if lock is None:
            yield
            return
        lock.leave(serial=False)  # never an upgrade: two tests asking at once would deadlock
        lock.enter(serial=True)
        try:
            yield
        finally:
            lock.leave(serial=True)
            lock.enter(serial=False)

    return part


@pytest.fixture(autouse=True)
def no_tensorflow_in_the_test_process():
    """TensorFlow stays in the jobs' processes: a test process that imported it and then torch
    or torchvision crashed (a segmentation fault in triton's import), taking its xdist process
    and the tests after it down. A test that brings it in is named here instead."""
    yield
    assert "tensorflow" not in sys.modules, (
        "this test imported TensorFlow into the test process; read TensorFlow's output in a "
        "process of its own (tests/helpers)")


@pytest.fixture
def fault_record(request) -> list[dict]:
    """What a fault-injection test saw: one entry per fault injected ({"hung": bool, "lost": n}),
    carried on the test's report so that the summary counts them whichever process ran it."""
    faults: list[dict] = []
    yield faults
    request.node.user_properties.extend(("fault", f) for f in faults)


def pytest_terminal_summary(terminalreporter):
    faults = [value for reports in terminalreporter.stats.values() for r in reports
              if getattr(r, "when", None) == "teardown"
              for name, value in getattr(r, "user_properties", ()) if name == "fault"]
    if faults:
        terminalreporter.write_line(
            f"fault injection: {len(faults)} faults injected, "
            f"{sum(f['hung'] for f in faults)} hangs, "
            f"{sum(f['lost'] for f in faults)} checkpoints lost")

