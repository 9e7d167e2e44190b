"""Tests of common/balance.py: the per-epoch load-balance verdict from every rank's times."""

from __future__ import annotations

import pytest

from common.balance import SLOW_DATA_ENV, EpochTimes, rank_times, summarize


def test_even_ranks_have_a_spread_of_one_and_no_straggler():
    fields = summarize([("a", 10, 0.1, 1.0, 0.2), ("b", 10, 0.1, 1.0, 0.3)])
    assert fields["balance_spread"] == pytest.approx(1.0)
    assert fields["straggler"] is None
    assert fields["comm_share"] == pytest.approx(0.5 / 2.7)


def test_the_slowest_rank_is_named_with_its_host_and_cause():
    every = [("h1", 10, 0.1, 1.0, 2.0), ("h1", 10, 0.1, 1.0, 2.0), ("h2", 10, 2.0, 1.0, 0.1),
             ("h2", 10, 0.1, 1.2, 1.9)]
    fields = summarize(every)
    assert (fields["slowest_rank"], fields["slowest_host"]) == (2, "h2")
    assert fields["fastest_rank"] in (0, 1)
    # busy 3.0 against a median of (1.1 + 1.3) / 2
    assert fields["balance_spread"] == pytest.approx(3.0 / 1.2)
    assert fields["straggler"] == ("rank 2 on h2 is 2.5x slower than the median: data loading "
                                   "65% of its step")
    slow_compute = summarize([("x", 1, 0.0, 1.0, 1.0), ("y", 1, 0.0, 3.0, 0.0)])
    assert slow_compute["straggler"].endswith("compute 100% of its step")


def test_without_a_communication_split_the_share_is_unknown():
    fields = summarize([("a", 5, 0.5, 1.0, None), ("b", 5, 0.5, 1.0, None)])
    assert fields["comm_share"] is None and fields["comm_s_per_step_by_rank"] == [None, None]
    # rank 0's step waited for rank 1's data: the time above the shortest step is waiting
    slow_data = summarize([("a", 1, 0.1, 1.5, None), ("b", 1, 0.6, 1.0, None)])
    assert slow_data["slowest_rank"] == 1 and slow_data["compute_s_per_step_by_rank"] == [1.0, 1.0]
    assert slow_data["balance_spread"] == pytest.approx(1.6 / 1.35)
    assert summarize([("a", 0, 0.0, 0.0, None)])["balance_spread"] == 1.0  # no step at all


def test_epoch_times_split_data_waits_from_steps(monkeypatch):
    monkeypatch.setenv(SLOW_DATA_ENV, "1:0.01")
    times = EpochTimes()
    out = [times.timed_step(lambda b: b * 2, b) for b in times.batches(range(5), rank=1)]
    assert out == [0, 2, 4, 6, 8] and times.steps == 5
    assert times.data_s >= 0.05 and times.step_s < 0.05
    other = EpochTimes()
    list(other.batches(range(5), rank=0))  # the hook slows only the rank it names
    assert other.data_s < 0.01
    times.comm_s = 0.0
    host, steps, data, compute, comm = rank_times(times)
    assert steps == 5 and data == times.data_s and comm == 0.0 and compute == times.step_s
