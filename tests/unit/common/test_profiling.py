"""Tests of common/monitor/profiling.py: the timeline summary read from a written timeline, the autotuner's
choice from its log, the flags."""

from __future__ import annotations

import json

import pytest

from common.config.core import ConfigError, TrainConfig
from common.monitor.profiling import read_autotune, read_events, settings, summarize_timeline


def _events(*events):
    meta = [{"name": "process_name", "ph": "M", "pid": 0, "args": {}}]
    return meta + list(events)


def _tensor(pid, name, t0, ranks, shape, dtype="HOROVOD_FLOAT32", fused=True):
    """One allreduce as Horovod's timeline writes it, starting at ``t0`` microseconds."""
    ev = [{"name": "process_name", "ph": "M", "pid": pid, "args": {"name": name}},
          {"ph": "B", "name": "NEGOTIATE_ALLREDUCE", "ts": t0, "pid": pid}]
    ev += [{"ph": "X", "name": str(r), "ts": t0 + 10 * (i + 1), "pid": pid, "dur": 0}
           for i, r in enumerate(ranks)]
    ev += [{"ph": "E", "ts": t0 + 100, "pid": pid},
           {"ph": "B", "name": "ALLREDUCE", "ts": t0 + 100, "pid": pid}]
    if fused:
        ev += [{"ph": "B", "name": "MEMCPY_IN_FUSION_BUFFER", "ts": t0 + 100, "pid": pid},
               {"ph": "E", "ts": t0 + 120, "pid": pid}]
    ev += [{"ph": "B", "name": "MPI_ALLREDUCE", "ts": t0 + 120, "pid": pid},
           {"ph": "E", "ts": t0 + 220, "pid": pid}]
    if fused:
        ev += [{"ph": "B", "name": "MEMCPY_OUT_FUSION_BUFFER", "ts": t0 + 220, "pid": pid},
               {"ph": "E", "ts": t0 + 230, "pid": pid}]
    ev.append({"ph": "E", "ts": t0 + 230, "pid": pid,
               "args": {"dtype": dtype, "shape": shape}})
    return ev


def test_the_timeline_summary_counts_fused_time_once_and_bytes_per_cycle(tmp_path):
    cycle = [{"ph": "i", "name": "CYCLE_START", "ts": t, "s": "g"} for t in (0, 1000, 2000)]
    events = _events(cycle[0], *_tensor(1, "grad.w", 10, [0, 1], "[10, 20]"),
                     *_tensor(2, "grad.b", 10, [1, 0], "[20]"), cycle[1], cycle[2],
                     *_tensor(1, "grad.w", 2010, [0, 1], "[10, 20]"))
    path = tmp_path / "timeline.json"
    path.write_text(json.dumps(events))
    s = summarize_timeline(str(path), fusion_threshold_bytes=1600)
    assert s["allreduces"] == 3 and s["tensors"] == 2 and s["other_operations"] == {}
    assert s["cycles"] == 3 and s["cycles_with_work"] == 2  # the middle cycle did nothing
    # the two fused tensors share their intervals: counted once
    assert s["negotiate_s"] == pytest.approx(2 * 100e-6)
    assert s["communicate_s"] == pytest.approx(2 * 100e-6)
    assert s["fusion_copy_s"] == pytest.approx(2 * 30e-6)
    assert s["bytes_reduced"] == 2 * 800 + 80
    assert s["per_cycle"]["bytes"] == pytest.approx((880 + 800) / 2)
    assert s["fusion_fill_max"] == pytest.approx(880 / 1600)
    assert s["fusion_fill_mean"] == pytest.approx((880 + 800) / 2 / 1600)
    # grad.w waited for rank 1 twice, grad.b for rank 0 once
    assert s["last_ready_by_rank"] == {"0": 1, "1": 2}


def test_a_timeline_cut_short_is_read_to_its_last_whole_event(tmp_path):
    events = _events(*_tensor(1, "g", 0, [0, 1], "[4]", dtype="HOROVOD_FLOAT64", fused=False))
    text = json.dumps(events)
    path = tmp_path / "cut.json"
    path.write_text(text[:-1] + ', {"ph": "B", "na')  # a run killed mid-write
    assert len(read_events(str(path))) == len(events)
    s = summarize_timeline(str(path))
    assert s["bytes_reduced"] == 32 and s["fusion_copy_s"] == 0
    assert "error" in summarize_timeline(str(tmp_path / "missing.json"))

HEADER = ("hierarchical_allreduce,hierarchical_allgather,torus_allreduce,cache_enabled,"
          "cycle_time_ms,tensor_fusion_threshold,score\n")


def test_the_autotuner_s_choice_is_read_from_its_log(tmp_path):
    log = tmp_path / "autotune.csv"
    log.write_text(HEADER + "0,0,0, 1,5,64,100.5\n0,0,0, 1,2.5,16,210\n0,0,0, 0,1,4,150\n")
    still = read_autotune(str(log))
    assert still["samples"] == 3 and not still["finished"]
    assert still["chosen"]["cycle_time_ms"] == 2.5 and still["score"] == 210
    log.write_text(log.read_text() + "0,0,0, 1,2.5,16,210\n")  # Horovod's closing best row
    done = read_autotune(str(log))
    assert done["finished"] and done["samples"] == 3
    assert done["chosen"] == {"hierarchical_allreduce": 0, "hierarchical_allgather": 0,
                              "torus_allreduce": 0, "cache_enabled": 1, "cycle_time_ms": 2.5,
                              "tensor_fusion_threshold_mb": 16}
    assert read_autotune(str(tmp_path / "none.csv"))["samples"] == 0


def test_the_flags_set_horovod_s_variables_only_when_given(tmp_path):
    assert settings(TrainConfig().profiling, "m.jsonl") == {}
    cfg = TrainConfig.from_flags(timeline_out="t.json", autotune=True, metrics_file=str(tmp_path / "m.jsonl"))
    cfg.validate()
    assert settings(cfg.profiling, cfg.output.metrics_file) == {
        "HOROVOD_TIMELINE": "DYNAMIC", "HOROVOD_AUTOTUNE": "1",
        "HOROVOD_AUTOTUNE_LOG": str(tmp_path / "autotune.csv")}
    with pytest.raises(ConfigError, match="--autotune writes its log beside --metrics-file"):
        TrainConfig.from_flags(autotune=True).validate()
    with pytest.raises(ConfigError, match="--timeline-out must be a file path"):
        TrainConfig.from_flags(timeline_out=str(tmp_path)).validate()
    group = cfg.for_group(1)  # --mpi-groups: every group's rank 0 writes its own timeline
    assert group.profiling.timeline_out.endswith("group1/t.json")
