"""Tests of common/monitor/balance.py: the per-epoch load-balance verdict from every rank's times."""

from __future__ import annotations

import pytest

from common.monitor.balance import SLOW_DATA_ENV, EpochTimes, rank_times, summarize


def test_even_ranks_have_a_spread_of_one_and_no_straggler():
    fields = summarize([("a", 10, 0.1, 1.0, 0.2), ("b", 10, 0.1, 1.0, 0.3)])
    assert fields["balance_spread"] == pytest.approx(1.0)
    assert fields["straggler"] is None
    assert fields["comm_share"] == pytest.approx(0.5 / 2.7)


def test_the_slowest_rank_is_named_with_its_host_and_cause():
    every = [("h1", 20, 0.1, 1.0, 2.0), ("h1", 20, 0.1, 1.0, 2.0), ("h2", 20, 2.0, 1.0, 0.1),
             ("h2", 20, 0.1, 1.2, 1.9)]
    fields = summarize(every)
    assert (fields["slowest_rank"], fields["slowest_host"]) == (2, "h2")
    assert fields["fastest_rank"] in (0, 1)
    # busy 3.0 against a median of (1.1 + 1.3) / 2
    assert fields["balance_spread"] == pytest.approx(3.0 / 1.2)
    assert fields["straggler"] == ("rank 2 on h2 is 2.5x slower than the median: data loading "
                                   "65% of its step")
    slow_compute = summarize([("x", 16, 0.0, 1.0, 1.0), ("y", 16, 0.0, 3.0, 0.0)])
    assert slow_compute["straggler"].endswith("compute 100% of its step")


def test_an_epoch_too_short_to_judge_names_no_straggler():
    """4 steps a rank: the spread is measured and recorded, but no rank is called a straggler."""
    short = summarize([("x", 4, 0.0, 1.0, 1.0), ("y", 4, 0.0, 3.0, 0.0)])
    assert short["balance_spread"] == pytest.approx(1.5) and short["slowest_rank"] == 1
    assert short["straggler"] is None
    assert summarize([("x", 15, 0.0, 1.0, 1.0), ("y", 16, 0.0, 3.0, 0.0)])["straggler"] is None


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
    clock = iter([0.0, 0.0, 0.5, 0.5, 1.0, 1.0, 1.5, 1.5, 2.0, 2.0, 2.5])  # 0.5 s of each step
    times = EpochTimes(comm_clock=lambda: next(clock))
    out = [times.timed_step(lambda b: b * 2, b) for b in times.batches(range(5), rank=1)]
    assert out == [0, 2, 4, 6, 8] and times.steps == 5
    assert times.data_s >= 0.05 and times.step_s < 0.05
    assert times.comm_by_step == [0.5] * 5
    other = EpochTimes()
    list(other.batches(range(5), rank=0))  # the hook slows only the rank it names
    assert other.data_s < 0.01
    monkeypatch.setenv(SLOW_DATA_ENV, "*:0.01")  # or every rank
    for rank in (0, 3):
        every = EpochTimes()
        out = [every.timed_step(lambda b: b, b) for b in every.batches(range(5), rank=rank)]
        assert out == list(range(5)) and every.data_s >= 0.05
    host, steps, data, compute, comm = rank_times(times)
    assert steps == 5 and data == pytest.approx(times.data_s) and comm == 2.5
    assert compute == 0.0  # the clock claimed more than the step took: never negative


def steps(times: EpochTimes, data: list[float], step: list[float]) -> EpochTimes:
    times.data_by_step, times.step_by_step = data, step
    times.comm_by_step = [0.0] * len(step)
    return times


def test_without_a_clock_there_is_no_split():
    assert rank_times(EpochTimes())[4] is None
    times = EpochTimes(comm_clock=lambda: None)  # TensorFlow's backend
    times.timed_step(lambda b: b, 1)
    assert times.comm_by_step is None and rank_times(times)[4] is None


def test_a_one_off_pause_is_left_out_and_a_steady_straggler_is_not():
    even = steps(EpochTimes(), [0.0] * 20, [0.01] * 20)
    paused = steps(EpochTimes(), [0.0] * 20, [0.01] * 19 + [0.2])  # one 200 ms pause
    assert summarize([rank_times(even), rank_times(paused)])["straggler"] is None
    assert summarize([rank_times(even), rank_times(paused, trim=0.0)])["straggler"]
    slow = steps(EpochTimes(), [0.01] * 20, [0.01] * 20)  # slow data on every step
    fields = summarize([rank_times(even), rank_times(slow)])
    assert fields["slowest_rank"] == 1 and fields["straggler"].startswith("rank 1 on ")
    often = steps(EpochTimes(), [0.0] * 20, [0.01] * 14 + [0.1] * 6)  # slow on 6 steps of 20
    assert summarize([rank_times(even), rank_times(often)])["slowest_rank"] == 1
    assert summarize([rank_times(even), rank_times(often)])["straggler"]
    assert rank_times(even)[1] == 18  # two of twenty steps left out
