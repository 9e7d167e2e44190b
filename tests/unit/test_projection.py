"""The scaling projection's cost model and the link probe's fit (benchmarks.projection, .linkprobe)."""

from __future__ import annotations

import pytest

from benchmarks.linkprobe import fit
from benchmarks.projection import Link, efficiency, project, ring_allreduce_s, table


def test_links_parse_with_units_and_bad_ones_say_what_to_give():
    assert Link.parse("10Gbit") == Link(10e9, 0.0)
    assert Link.parse("100Mbit,0.5ms") == Link(100e6, 0.5e-3)
    assert Link.parse("25gbit/s, 20us") == Link(25e9, pytest.approx(20e-6))
    assert Link.parse("1GB,1us") == Link(8e9, 1e-6)  # bytes
    assert Link.parse("100Mbit,0.5ms").label == "100 Mbit/s, 500 us"
    for bad in ("fast", "10Gbit,soon", "0Gbit"):
        with pytest.raises(ValueError, match="bad (link|latency)"):
            Link.parse(bad)


def test_the_ring_sends_2_n_minus_1_over_n_of_the_bytes_and_2_n_minus_1_latencies_a_buffer():
    gbit = Link(1e9, 0.0)
    assert ring_allreduce_s(1, 100e6, gbit) == 0.0
    assert ring_allreduce_s(2, 100e6, gbit) == pytest.approx(0.8)  # 100 MB once, at 1 Gbit/s
    assert ring_allreduce_s(4, 100e6, gbit) == pytest.approx(1.2)  # 1.5x
    assert ring_allreduce_s(10**6, 100e6, gbit) == pytest.approx(1.6, rel=1e-5)  # toward 2x
    slow = Link(1e9, 1e-3)
    assert ring_allreduce_s(3, 1.0, slow) == pytest.approx(4e-3, rel=1e-3)  # 2(N-1) messages
    # more than one fusion buffer: the latency once per buffer
    assert ring_allreduce_s(3, 300.0, slow, fusion_bytes=100) == pytest.approx(12e-3, rel=1e-3)


def test_efficiency_hides_the_allreduce_behind_the_backward_and_falls_with_workers():
    link = Link(1e9, 50e-6)
    step, grads = 0.3, 45e6  # ResNet-18's gradients: 0.36 s at N=2 over 1 Gbit/s
    assert efficiency(1, step, grads, link) == 1.0
    hidden = efficiency(2, step, grads, link)  # 0.2 s hidden of 0.36 s
    assert hidden == pytest.approx(0.3 / (0.3 + 0.36 + 2 * 50e-6 - 0.2), rel=1e-6)
    assert efficiency(2, step, grads, link, overlap=0.0) < hidden
    assert efficiency(2, 3.0, grads, link) == 1.0  # a long step hides it all
    rows = project([2, 8, 32, 128], step, grads, [link])
    effs = [r["efficiency"] for r in rows]
    assert effs == sorted(effs, reverse=True) and 0 < effs[-1] < effs[0] < 1
    assert "| 1 Gbit/s, 50 us | 128 |" in table(rows, step, grads, 2 / 3)


def test_the_link_probe_recovers_latency_and_bandwidth_from_allreduce_times():
    n, latency, bits = 4, 30e-6, 2e9
    samples = [(b, 2 * (n - 1) * latency + 2 * (n - 1) / n * b * 8 / bits)
               for b in (4096, 1 << 20, 16 << 20, 64 << 20)]
    got = fit(samples, n)
    assert got["latency_s"] == pytest.approx(latency, rel=1e-6)
    assert got["bits_per_s"] == pytest.approx(bits, rel=1e-6)
