"""The stall watchdog's verdicts, with two ranks' watchdogs in one process over real TCP sockets.

The multi-process cases (a worker stopped with SIGSTOP under MPI and Gloo) are in
tests/jobs/faults/test_rank_faults.py.
"""

from __future__ import annotations

import threading
import time

import pytest

from common.faults.watchdog import EXIT_STALLED, StallWatchdog, bounded

# Verdicts within a 1 s timeout: nothing beside them.
pytestmark = pytest.mark.serial



class Exited(Exception):
    pass


@pytest.fixture
def pair():
    """Rank 0's and rank 1's watchdogs (timeout 1 s), started together; their exits are
    recorded, not taken; closed after the test."""
    dogs, exits = start_pair(timeout=1.0)
    yield dogs, exits
    for d in dogs:
        d.close()


def start_pair(timeout: float, starting: bool = False):
    exits: dict[int, list[int]] = {0: [], 1: []}
    dogs = [StallWatchdog(timeout, r, 2, exit_fn=exits[r].append) for r in (0, 1)]
    gathered: list = [None, None]
    barrier = threading.Barrier(2)

    def allgather(rank):
        def gather(value):
            gathered[rank] = value
            barrier.wait()
            return list(gathered)
        return gather

    threads = [threading.Thread(target=dogs[r].start, args=(allgather(r), starting))
               for r in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    return dogs, exits


def wait_for(condition, limit: float) -> float:
    t0 = time.monotonic()
    while not condition():
        assert time.monotonic() - t0 < limit, "no verdict in time"
        time.sleep(0.05)
    return time.monotonic() - t0


def test_ranks_that_keep_stepping_are_never_stopped(pair):
    dogs, exits = pair
    for step in range(30):
        for d in dogs:
            d.beat(step)
        time.sleep(0.1)
    assert exits == {0: [], 1: []}


def test_a_silent_worker_is_named_by_rank_0_and_every_rank_stops(pair):
    dogs, exits = pair
    dogs[1].beat(7)
    time.sleep(0.3)
    dogs[1]._stop.set()  # rank 1 freezes: no heartbeat, no progress
    took = wait_for(lambda: exits[0], limit=5)
    assert exits[0] == [EXIT_STALLED]
    assert took >= 0.5  # not before the timeout (minus the time already waited)
    assert "rank 1 on " in dogs[0].verdict and "stopped answering" in dogs[0].verdict
    assert "at step 7" in dogs[0].verdict and "--stall-timeout 1" in dogs[0].verdict


def test_workers_name_rank_0_when_it_stops_answering(pair):
    dogs, exits = pair
    dogs[0]._stop.set()  # rank 0 freezes
    wait_for(lambda: exits[1], limit=5)
    assert exits[1] == [EXIT_STALLED]
    assert "rank 0 on " in dogs[1].verdict and "stopped answering" in dogs[1].verdict


def test_a_rank_behind_the_others_is_named(pair):
    dogs, exits = pair
    dogs[0].beat(5)
    dogs[1].beat(4)  # both answer; nobody steps again, rank 1 is one step behind
    wait_for(lambda: exits[0], limit=5)
    assert "rank 1 on " in dogs[0].verdict and "stuck at step 4" in dogs[0].verdict
    wait_for(lambda: exits[1], limit=5)  # told by rank 0
    assert dogs[1].verdict == dogs[0].verdict


def test_a_deadlock_with_every_rank_answering_is_reported_as_such(pair):
    dogs, exits = pair
    dogs[0].beat(3)
    dogs[1].beat(3)
    wait_for(lambda: exits[0], limit=5)
    assert "every rank answers but none finished a step since step 3" in dogs[0].verdict


@pytest.fixture
def starting_pair():
    """The pair in the start-up mode (before training: only silence is judged)."""
    dogs, exits = start_pair(timeout=1.0, starting=True)
    yield dogs, exits
    for d in dogs:
        d.close()


def test_before_training_ranks_that_answer_are_never_stopped_without_steps(starting_pair):
    dogs, exits = starting_pair
    time.sleep(2.5)  # a model built or data read slower than the timeout: no step, no verdict
    assert exits == {0: [], 1: []}
    for d in dogs:  # then the loop starts: progress is judged from now on
        d.training()
    wait_for(lambda: exits[0], limit=5)
    assert "every rank answers but none finished a step" in dogs[0].verdict


def test_before_training_a_silent_rank_is_named(starting_pair):
    dogs, exits = starting_pair
    dogs[1]._stop.set()  # rank 1 freezes while the model is built
    wait_for(lambda: exits[0], limit=5)
    assert dogs[0].verdict.startswith("stalled before training started (--stall-timeout 1); ")
    assert "rank 1 on " in dogs[0].verdict and "stopped answering" in dogs[0].verdict


def test_before_training_workers_name_a_silent_rank_0(starting_pair):
    dogs, exits = starting_pair
    dogs[0]._stop.set()
    wait_for(lambda: exits[1], limit=5)
    assert "stalled before training started" in dogs[1].verdict
    assert "rank 0 on " in dogs[1].verdict and "stopped answering" in dogs[1].verdict


def test_a_wait_before_the_watchdog_is_bounded():
    exits: list[int] = []
    with bounded("Horovod's start (hvd.init)", 0.5, exits.append):
        wait_for(lambda: exits, limit=5)  # the wait outlived the bound
    assert exits == [EXIT_STALLED]
    with bounded("a quick wait", 0.5, exits.append):
        pass
    time.sleep(0.8)
    assert exits == [EXIT_STALLED]  # a wait that ended in time is not judged
