"""Tests of exact metric averaging across ranks with uneven sample counts."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from common.monitor.metrics import CounterLayout, MetricSums, macro_f1


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
    a, b = MetricSums(CounterLayout((1, 5))), MetricSums(CounterLayout((1, 5)))
    a.add(1.0, [3, 8], 10)
    b.add(1.0, [1, 2], 10)
    g = a.global_sums(fake_allreduce([a, b]))
    assert g.top(1) == pytest.approx(0.2) and g.top(5) == pytest.approx(0.5)
    assert g.accuracy == g.top(1)


def test_metrics_lists_every_metric_the_counters_support():
    sums = MetricSums(CounterLayout((1, 5), confusion_classes=3))
    # 4 samples: true 0,0,1,2 predicted 0,1,1,1; top-5 always right with 3 classes
    confusion = np.array([[1, 1, 0], [0, 1, 0], [0, 1, 0]], dtype=float)
    sums.add_counters([4.0, 4, 2, 4, *confusion.ravel()])
    m = sums.metrics()
    assert set(m) == {"loss", "accuracy", "top5", "macro_f1"}
    assert m["accuracy"] == 0.5 and m["top5"] == 1.0
    # F1 per class: 0: 2*1/(2+0+1)=2/3; 1: 2*1/(2+2+0)=1/2; 2: 0
    assert m["macro_f1"] == pytest.approx((2 / 3 + 1 / 2 + 0) / 3)


def test_macro_f1_is_reduced_from_counts_not_averaged_per_rank():
    layout = CounterLayout((1,), confusion_classes=2)
    a, b = MetricSums(layout), MetricSums(layout)
    a.add_counters([0, 2, 2, 2, 0, 0, 0])  # rank a: two class-0 samples, both right
    b.add_counters([0, 2, 0, 0, 0, 2, 0])  # rank b: two class-1 samples, both called 0
    g = a.global_sums(fake_allreduce([a, b]))
    assert macro_f1(g) == pytest.approx((2 * 2 / (4 + 2) + 0) / 2)
    assert macro_f1(a) == 1.0  # rank a alone would say perfect


def test_keras_rank_means_become_exact_sums():
    """What the model.fit callback does with each rank's Keras log means."""
    a = MetricSums(values=[1.0 * 10, 10, 0.5 * 10])  # 10 samples, mean loss 1, acc 0.5
    b = MetricSums(values=[3.0 * 30, 30, 0.0])
    g = a.global_sums(fake_allreduce([a, b]))
    assert g.loss == pytest.approx(2.5) and g.accuracy == pytest.approx(5 / 40)
