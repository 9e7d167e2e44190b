"""Tests of the LR schedule: scaling rules, warmup endpoints and monotonicity, decay points."""

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from common.config.core import TrainConfig
from common.loop.schedule import LRSchedule, lr_multiplier


def test_multiplier_rules():
    assert lr_multiplier("linear", 4) == 4
    assert lr_multiplier("linear", 4, batches_per_allreduce=2) == 8
    assert lr_multiplier("sqrt", 4, batches_per_allreduce=4) == 4
    assert lr_multiplier("none", 16, 4) == 1
    # Adasum: no scaling by world size; by local size for hierarchical GPU Adasum.
    assert lr_multiplier("linear", 8, use_adasum=True) == 1
    assert lr_multiplier("linear", 8, 2, use_adasum=True, adasum_local_size=4) == 8
    with pytest.raises(ValueError):
        lr_multiplier("cubic", 2)


def test_warmup_endpoints_and_per_step_updates():
    s = LRSchedule(base_lr=0.1, multiplier=4, steps_per_epoch=10, epochs=10, warmup_epochs=2)
    assert s(0) == pytest.approx(0.1)
    assert s(10) == pytest.approx(0.1 + 0.3 * 0.5)  # halfway through warmup
    assert s(20) == pytest.approx(0.4)  # warmup ends at the scaled LR
    assert s(19) < s(20)
    assert len({s(i) for i in range(20)}) == 20  # a new LR every step, not every epoch


def test_step_decay_points():
    s = LRSchedule(0.1, 2, steps_per_epoch=5, epochs=10, decay="step", decay_epochs=(3, 6),
                   decay_factor=0.1)
    assert s(14) == pytest.approx(0.2)  # last step of epoch 3 (0-based epoch 2)
    assert s(15) == pytest.approx(0.02)  # first step of epoch index 3
    assert s(29) == pytest.approx(0.02)
    assert s(30) == pytest.approx(0.002)


def test_cosine_goes_from_target_to_zero_after_warmup():
    s = LRSchedule(0.1, 2, steps_per_epoch=10, epochs=10, warmup_epochs=1, decay="cosine")
    assert s(10) == pytest.approx(0.2)
    assert s(55) == pytest.approx(0.1)  # half way through the cosine part
    assert s(100) == pytest.approx(0.0, abs=1e-12)


@given(base=st.floats(1e-4, 1.0), mult=st.floats(1.0, 64.0),
       spe=st.integers(1, 50), warm=st.floats(0.1, 5.0))
def test_warmup_is_monotonic_and_bounded(base, mult, spe, warm):
    s = LRSchedule(base, mult, steps_per_epoch=spe, epochs=20, warmup_epochs=warm)
    warm_steps = math.ceil(warm * spe)
    lrs = [s(i) for i in range(warm_steps + 1)]
    assert all(a <= b + 1e-15 for a, b in zip(lrs, lrs[1:], strict=False))
    assert lrs[0] == pytest.approx(base)
    assert max(lrs) <= base * mult * (1 + 1e-12)
    assert s(warm_steps) == pytest.approx(base * mult)


@given(spe=st.integers(1, 20), epochs=st.integers(1, 30), warm=st.floats(0, 3))
def test_cosine_never_increases_after_warmup(spe, epochs, warm):
    s = LRSchedule(0.1, 8, spe, epochs, warmup_epochs=warm, decay="cosine")
    start = math.ceil(warm * spe)
    lrs = [s(i) for i in range(start, epochs * spe + 1)]
    assert all(b <= a + 1e-15 for a, b in zip(lrs, lrs[1:], strict=False))


def test_from_config_uses_world_size_and_passes():
    cfg = TrainConfig.from_flags(base_lr=0.01, batches_per_allreduce=2, warmup_epochs=1)
    s = LRSchedule.from_config(cfg, world_size=4, steps_per_epoch=10)
    assert s.target_lr == pytest.approx(0.08)
    assert LRSchedule.from_config(TrainConfig.from_flags(lr_scaling="none"), 8, 10).target_lr == 0.01
