"""Tests of exact metric averaging across ranks with uneven sample counts."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from common.metrics import MetricSums


def fake_allreduce(shards):
    """An allreduce over simulated ranks: sums every rank's vector."""
    total = sum(s.to_array() for s in shards)
    return lambda _local: total


@given(st.lists(st.lists(st.tuples(st.floats(0, 10), st.booleans()), min_size=1, max_size=40),
                min_size=1, max_size=6))
def test_global_average_equals_pooled_average(ranks):
    shards = []
    for samples in ranks:
        s = MetricSums()
        # one "batch" per sample keeps the pooled truth simple
        for loss, right in samples:
            s.add(loss, int(right), 1)
        shards.append(s)
    g = shards[0].global_sums(fake_allreduce(shards))
    pooled = [x for r in ranks for x in r]
    assert g.count == len(pooled)
    assert g.loss == pytest.approx(np.mean([x[0] for x in pooled]))
    assert g.accuracy == pytest.approx(np.mean([x[1] for x in pooled]))


def test_uneven_shards_are_weighted_by_samples():
    a, b = MetricSums(), MetricSums()
    a.add(mean_loss=1.0, correct=10, count=10)  # 10 samples, loss 1, all right
    b.add(mean_loss=3.0, correct=0, count=30)  # 30 samples, loss 3, all wrong
    g = a.global_sums(fake_allreduce([a, b]))
    assert g.loss == pytest.approx(2.5)  # not the mean of means (2.0)
    assert g.accuracy == pytest.approx(0.25)  # not 0.5


def test_empty_sums_are_nan():
    assert np.isnan(MetricSums().loss) and np.isnan(MetricSums().accuracy)


def test_topk_sums_reduce_per_k():
    a, b = MetricSums(topk=(1, 5)), MetricSums(topk=(1, 5))
    a.add(1.0, [3, 8], 10)
    b.add(1.0, [1, 2], 10)
    g = a.global_sums(fake_allreduce([a, b]))
    assert g.top(1) == pytest.approx(0.2) and g.top(5) == pytest.approx(0.5)
    assert g.accuracy == g.top(1)
