"""The scaling projection's cost model and the link probe's fit (benchmarks.projection, .linkprobe)."""

from __future__ import annotations

import json

import pytest

from benchmarks.linkprobe import fit
from benchmarks.projection import Link, compare, efficiency, project, ring_allreduce_s, table
from benchmarks.scaling import distributed_compute, first_slots, launch_command


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


def test_the_fit_weighs_every_size_alike_so_a_slow_largest_buffer_keeps_the_latency():
    n, latency, bits = 2, 0.5e-3, 1e9
    samples = [(b, 2 * latency + b * 8 / bits) for b in (4096, 65536, 1 << 20, 4 << 20)]
    samples.append((64 << 20, 2 * (64 << 20) * 8 / bits))  # twice its line: memory, not link
    got = fit(samples, n)
    assert got["latency_s"] == pytest.approx(latency, rel=0.05)  # a plain fit gives 0 here
    assert 0.8e9 < got["bits_per_s"] <= bits


def test_the_compute_step_measured_on_several_workers_replaces_the_lone_step():
    link = Link(100e6, 0.0)
    grads = 1.25e6  # 0.1 s at N=2 over 100 Mbit/s
    assert efficiency(2, 0.2, grads, link, overlap=0.0) == pytest.approx(0.2 / 0.3)
    # distributed, the worker computes 0.25 s a step: the link's 0.1 s comes on top of that
    assert efficiency(2, 0.2, grads, link, overlap=0.0, compute_s=0.25) == pytest.approx(0.2 / 0.35)
    assert efficiency(2, 0.2, grads, link, overlap=2 / 3, compute_s=0.25) == pytest.approx(0.2 / 0.25)
    rows = project([2], 0.2, grads, [link], 0.0, compute_s=0.25)
    assert rows[0]["efficiency"] == rows[0]["efficiency_no_overlap"] < rows[0][
        "efficiency_backward_hidden"]


def test_hosts_give_each_count_its_first_slots():
    assert first_slots("a:1,b:1", 1) == "a:1"
    assert first_slots("a:1,b:1", 2) == "a:1,b:1"
    assert first_slots("a:2,b:2,c:2", 3) == "a:2,b:1"
    assert first_slots("a,b", 2) == "a:1,b:1"
    with pytest.raises(ValueError, match="fewer than 3 slots"):
        first_slots("a:1,b:1", 3)
    assert launch_command("mpirun", 2, "a:1,b:1")[-6:-4] == ["-H", "a:1,b:1"]
    assert "-H" not in launch_command("mpirun", 2)


def test_distributed_compute_is_the_largest_counts_step_less_its_wait():
    runs = {1: [{"step_s": 0.2, "comm_s": 0.0}],
            2: [{"step_s": 0.4, "comm_s": 0.1}, {"step_s": 0.5, "comm_s": 0.1},
                {"error": "exit 1"}]}
    assert distributed_compute(runs) == (pytest.approx(0.35), 2)
    assert distributed_compute({1: runs[1]}) == (None, None)


def test_compare_sets_each_links_measured_efficiency_beside_its_prediction(tmp_path):
    reports = []
    for name, measured, bits in (("fast", 0.80, 1e9), ("slow", 0.40, 25e6)):
        link = Link(bits, 300e-6)
        rows = project([2, 8], 0.25, 1.09e6, [link], 0.0, compute_s=0.27)
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps({"date": "2026-12-07", "projection": {
            "step_s": 0.25, "compute_s": 0.27, "rows": rows,
            "measured": [{"link": link.label, "workers": 2, "efficiency": measured}]}}))
        reports.append(path)
    got = compare(reports, tmp_path / "compared")
    assert [(r["link"], r["workers"]) for r in got] == [("1 Gbit/s, 300 us", 2),
                                                          ("25 Mbit/s, 300 us", 2)]
    slow = got[1]["predicted"]  # 0.25 / (0.27 + 2 x 300 us + 1.09 MB at 25 Mbit/s)
    assert slow == pytest.approx(0.25 / (0.27 + 600e-6 + 1.09e6 * 8 / 25e6))
    text = (tmp_path / "compared.md").read_text()
    assert f"| 25 Mbit/s, 300 us | 2 | 250 ms | 349.4 ms | 40% | {slow:.0%} | " \
           f"{100 * (slow - 0.40):+.0f} points |" in text
    assert (tmp_path / "compared.png").stat().st_size > 10_000
