"""Profiling owns Horovod's own instruments for a run: its timeline and summary, its autotuner and choice.

``--timeline-out PATH``: before ``hvd.init`` the core sets ``HOROVOD_TIMELINE=DYNAMIC`` (Horovod
then starts its timeline writer on the coordinator, rank 0, without a file); once every rank is
up, :func:`start` opens ``PATH`` with cycle markers, and at the end of the run :func:`finish`
closes it (``hvd.stop_timeline`` waits until the writer has flushed every event) and rank 0
reads it back: :func:`summarize_timeline` turns the Chrome-trace events into the time spent
negotiating (from the first rank's request to the last rank's, i.e. waiting for the other
ranks), waiting for data inside an operation, copying into and out of the fusion buffer and
communicating, the bytes reduced, and how full each fusion cycle's buffer was. Time is the
union of the intervals over tensors (fused tensors share one interval), so nothing is counted
twice.

``--autotune``: the core sets ``HOROVOD_AUTOTUNE=1`` and ``HOROVOD_AUTOTUNE_LOG`` to
``autotune.csv`` beside the metrics file; rank 0's autotuner writes one row per scored sample
there, and one last row with the best parameters once it has finished. :func:`read_autotune`
says what it chose (or, when the run ended before it finished, the best sample so far).

Both are off by default and then cost nothing: no variable is set, no thread is started.
"""

from __future__ import annotations

import csv
import json
import os
import re
from typing import Any

from common.base.errors import UserError, agree
from common.config.core import ProfilingConfig

TIMELINE_ENV = "HOROVOD_TIMELINE"
AUTOTUNE_LOG_NAME = "autotune.csv"
# Horovod's fusion buffer when HOROVOD_FUSION_THRESHOLD is not set (operations.cc, 0.28.1).
DEFAULT_FUSION_THRESHOLD = 128 * 1024 * 1024

_DTYPE_BYTES = {"UINT8": 1, "INT8": 1, "BOOL": 1, "UINT16": 2, "INT16": 2, "FLOAT16": 2,
                "BFLOAT16": 2, "INT32": 4, "FLOAT32": 4, "INT64": 8, "FLOAT64": 8}
_COMMUNICATION = re.compile(r"^(MPI|GLOO|NCCL|CCL|DDL)_")
_WAITING = ("WAIT_FOR_DATA", "WAIT_FOR_OTHER_TENSOR_DATA", "QUEUE")
_COPY = re.compile(r"^(INIT_FUSION_BUFFER|MEMCPY_)")


def autotune_log(cfg: ProfilingConfig, metrics_file: str | None) -> str | None:
    """Where the autotuner's log goes: beside the metrics file."""
    if not cfg.autotune or not metrics_file:
        return None
    return os.path.join(os.path.dirname(os.path.abspath(metrics_file)), AUTOTUNE_LOG_NAME)


def settings(cfg: ProfilingConfig, metrics_file: str | None) -> dict[str, str]:
    """The Horovod environment these flags need before ``hvd.init`` (flag-set: they win over
    the environment)."""
    wanted = {}
    if cfg.timeline_out:
        wanted[TIMELINE_ENV] = "DYNAMIC"
    log = autotune_log(cfg, metrics_file)
    if log:
        wanted["HOROVOD_AUTOTUNE"] = "1"
        wanted["HOROVOD_AUTOTUNE_LOG"] = log
    return wanted


def prepare(cfg: ProfilingConfig, metrics_file: str | None) -> dict[str, str]:
    """Set :func:`settings` in the environment (before ``hvd.init``) and return each as
    ``"value (--flag)"``. The autotuner opens its log inside ``hvd.init``, so its folder is made
    here, by every rank (a folder, never a file: the log itself is written by rank 0 alone)."""
    used = {}
    for name, value in settings(cfg, metrics_file).items():
        os.environ[name] = value
        used[name] = f"{value} ({'--timeline-out' if name == TIMELINE_ENV else '--autotune'})"
    log = autotune_log(cfg, metrics_file)
    if log:
        try:
            os.makedirs(os.path.dirname(log), exist_ok=True)
        except OSError as e:  # before hvd.init: each rank says it and exits (common.faults.ending)
            raise UserError(f"--autotune: cannot create {os.path.dirname(log)!r} for its log "
                            f"({e.strerror or e})") from None
    return used


def start(hvd, cfg: ProfilingConfig, is_root: bool, broadcast_object) -> str | None:
    """Open the timeline file (every rank calls this, after ``hvd.init``); return its path.

    Rank 0 makes its folder and empties an older file of that name; a failure is agreed by every rank
    (a collective) so that the job stops in one line instead of training without a timeline."""
    if not cfg.timeline_out:
        return None
    path, error = os.path.abspath(cfg.timeline_out), ""
    if is_root:
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w"):
                pass  # writable; Horovod's writer truncates it again
        except OSError as e:
            error = f"--timeline-out {cfg.timeline_out!r}: cannot write it ({e.strerror or e})"
    agree(not error, error, broadcast_object)
    hvd.start_timeline(path, mark_cycles=True)
    return path


def finish(hvd, cfg: ProfilingConfig, is_root: bool, timeline: str | None,
           metrics_file: str | None) -> dict[str, Any]:
    """Close the timeline (every rank calls this) and, on rank 0, the final record's fields:
    ``timeline`` (:func:`summarize_timeline`) and ``autotune`` (:func:`read_autotune`)."""
    fields: dict[str, Any] = {}
    if timeline:
        hvd.stop_timeline()  # the coordinator's call returns once the file is closed
        if is_root:
            fields["timeline"] = summarize_timeline(timeline, fusion_threshold())
    log = autotune_log(cfg, metrics_file)
    if log and is_root:
        fields["autotune"] = read_autotune(log)
    return fields


def fusion_threshold() -> int:
    """The fusion buffer's size in bytes, as Horovod read it at init."""
    value = os.environ.get("HOROVOD_FUSION_THRESHOLD", "")
    return int(value) if value.isdigit() else DEFAULT_FUSION_THRESHOLD


def read_events(path: str) -> list[dict]:
    """The timeline's events. Horovod keeps the file valid JSON after every event (``...}]``);
    a file cut short (a killed run) is read up to its last whole event."""
    with open(path) as f:
        text = f.read().strip()
    if not text:
        return []
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        cut = text.rstrip(",]").rsplit("}", 1)[0]
        return json.loads(cut + "}]") if cut.startswith("[") else []


def _union(intervals: list[tuple[float, float]]) -> float:
    total, end = 0.0, None
    for a, b in sorted(intervals):
        if end is None or a > end:
            total += b - a
            end = b
        elif b > end:
            total += b - end
            end = b
    return total


def _nbytes(args: dict) -> int:
    dtype = str(args.get("dtype", "")).upper().removeprefix("HOROVOD_")
    dims = [int(d) for d in re.findall(r"\d+", str(args.get("shape", "")))]
    n = 1
    for d in dims:
        n *= d
    return n * _DTYPE_BYTES.get(dtype, 0)


def summarize_timeline(path: str, fusion_threshold_bytes: int = DEFAULT_FUSION_THRESHOLD) -> dict:
    """What a Horovod timeline says about the run's collectives.

    Overall and per cycle that reduced something (a cycle is one round of Horovod's background
    thread; the tensors it fuses are reduced together): seconds negotiating, waiting, copying
    through the fusion buffer and communicating (every operation: allreduces, and the
    broadcasts and allgathers of the core's own collectives); the bytes allreduced; and the
    fusion buffer's fill (bytes a cycle allreduced / the buffer's size). ``last_ready_by_rank``
    counts, per rank, the negotiations that waited for that rank last: a straggler is last most
    often."""
    try:
        events = read_events(path)
    except (OSError, ValueError) as e:
        return {"path": path, "error": f"cannot read the timeline ({e})"}
    spans: dict[str, list[tuple[float, float]]] = {
        "negotiate": [], "wait": [], "fusion": [], "communicate": [], "operation": []}
    open_spans: dict[int, list[tuple[str, float]]] = {}
    cycles: list[float] = []
    ops: list[tuple[float, int]] = []  # (start of each allreduce, its bytes)
    other_ops: dict[str, int] = {}  # broadcasts, allgathers...: how many
    last_ready: dict[int, int] = {}
    ready: dict[int, tuple[float, str]] = {}  # the latest rank-ready tick per tensor
    tensors = set()
    for ev in events:
        ph, ts = ev.get("ph"), ev.get("ts", 0) / 1e6
        pid = ev.get("pid", 0)
        if ph == "i" and ev.get("name") == "CYCLE_START":
            cycles.append(ts)
        elif ph == "B":
            open_spans.setdefault(pid, []).append((ev.get("name", ""), ts))
        elif ph == "X" and str(ev.get("name", "")).isdigit():
            ready[pid] = (ts, ev["name"])
        elif ph == "E" and open_spans.get(pid):
            name, began = open_spans[pid].pop()
            depth = len(open_spans[pid])
            if name.startswith("NEGOTIATE_"):
                spans["negotiate"].append((began, ts))
                if pid in ready:
                    rank = int(ready.pop(pid)[1])
                    last_ready[rank] = last_ready.get(rank, 0) + 1
            elif depth == 0:
                spans["operation"].append((began, ts))
                if name == "ALLREDUCE":
                    tensors.add(pid)
                    ops.append((began, _nbytes(ev.get("args", {}))))
                else:
                    other_ops[name] = other_ops.get(name, 0) + 1
            elif name in _WAITING:
                spans["wait"].append((began, ts))
            elif _COPY.match(name):
                spans["fusion"].append((began, ts))
            elif _COMMUNICATION.match(name):
                spans["communicate"].append((began, ts))
    seconds = {k: _union(v) for k, v in spans.items()}
    # Bytes per cycle: each allreduce belongs to the last cycle that started before it.
    per_cycle: dict[int, int] = {}
    for began, nbytes in ops:
        index = _cycle_of(cycles, began)
        per_cycle[index] = per_cycle.get(index, 0) + nbytes
    busy = len(per_cycle)
    total_bytes = sum(per_cycle.values())
    fills = [b / fusion_threshold_bytes for b in per_cycle.values()] if fusion_threshold_bytes else []
    span = (max(e for _, e in spans["operation"]) - min(b for b, _ in spans["operation"])
            if spans["operation"] else 0.0)
    return {
        "path": path,
        "allreduces": len(ops),
        "tensors": len(tensors),
        "other_operations": dict(sorted(other_ops.items())),
        "cycles": len(cycles),
        "cycles_with_work": busy,
        "span_s": span,
        "negotiate_s": seconds["negotiate"],
        "wait_s": seconds["wait"],
        "fusion_copy_s": seconds["fusion"],
        "communicate_s": seconds["communicate"],
        "in_operations_s": seconds["operation"],
        "bytes_reduced": total_bytes,
        "per_cycle": {
            "negotiate_s": seconds["negotiate"] / busy if busy else 0.0,
            "wait_s": seconds["wait"] / busy if busy else 0.0,
            "fusion_copy_s": seconds["fusion"] / busy if busy else 0.0,
            "communicate_s": seconds["communicate"] / busy if busy else 0.0,
            "bytes": total_bytes / busy if busy else 0.0,
            "tensors": len(ops) / busy if busy else 0.0,
        },
        "fusion_threshold_bytes": fusion_threshold_bytes,
        "fusion_fill_mean": sum(fills) / len(fills) if fills else 0.0,
        "fusion_fill_max": max(fills) if fills else 0.0,
        "last_ready_by_rank": {str(k): v for k, v in sorted(last_ready.items())},
    }


def _cycle_of(cycles: list[float], ts: float) -> int:
    """The index of the last cycle start at or before ``ts`` (-1: before the first)."""
    lo, hi = 0, len(cycles)
    while lo < hi:
        mid = (lo + hi) // 2
        if cycles[mid] <= ts:
            lo = mid + 1
        else:
            hi = mid
    return lo - 1


def timeline_line(summary: dict) -> str:
    """The timeline's summary as one printed line."""
    if "error" in summary:
        return f"timeline: {summary['path']}: {summary['error']}"
    busy = summary["cycles_with_work"]
    pc = summary["per_cycle"]
    return (f"timeline: {summary['path']}: {summary['allreduces']} allreduces of "
            f"{summary['tensors']} tensors in {busy} cycles with work (of {summary['cycles']}); "
            f"per cycle {pc['negotiate_s'] * 1e3:.2f} ms negotiating, "
            f"{pc['wait_s'] * 1e3:.2f} ms waiting, {pc['fusion_copy_s'] * 1e3:.2f} ms in the "
            f"fusion buffer, {pc['communicate_s'] * 1e3:.2f} ms communicating, "
            f"{pc['bytes'] / 1e6:.2f} MB reduced (fusion buffer {summary['fusion_fill_mean']:.1%}"
            f" full on average, {summary['fusion_fill_max']:.1%} at most)")


_AUTOTUNE_FIELDS = ("hierarchical_allreduce", "hierarchical_allgather", "torus_allreduce",
                    "cache_enabled", "cycle_time_ms", "tensor_fusion_threshold_mb")


def read_autotune(path: str) -> dict[str, Any]:
    """What Horovod's autotuner logged: the samples it scored and the parameters it chose.

    Each row is one scored sample (bytes per microsecond); once tuning has finished, Horovod
    writes one more row, the best sample's parameters and score again. So ``finished`` is true
    when the last row repeats an earlier one; otherwise ``chosen`` is the best sample so far,
    which Horovod would not yet hold fixed."""
    try:
        with open(path, newline="") as f:
            rows = [[c.strip() for c in row] for row in csv.reader(f)][1:]
    except OSError as e:
        return {"log": path, "error": f"no autotune log ({e.strerror or e})", "samples": 0}
    rows = [r for r in rows if len(r) == len(_AUTOTUNE_FIELDS) + 1]
    parsed = [({k: _number(v) for k, v in zip(_AUTOTUNE_FIELDS, r, strict=False)}, float(r[-1]))
              for r in rows]
    finished = len(parsed) >= 2 and parsed[-1] in parsed[:-1]
    samples = parsed[:-1] if finished else parsed
    if not samples:
        return {"log": path, "samples": 0, "finished": False, "chosen": None, "score": None}
    chosen, score = parsed[-1] if finished else max(samples, key=lambda p: p[1])
    return {"log": path, "samples": len(samples), "finished": finished, "chosen": chosen,
            "score": score}


def _number(text: str) -> float | int | bool:
    value = float(text)
    return int(value) if value.is_integer() else value


def autotune_line(result: dict) -> str:
    """The autotuner's choice as one printed line."""
    if result.get("error") or not result.get("chosen"):
        return (f"autotune: {result.get('error') or 'no sample scored yet (a longer run tunes)'};"
                f" log: {result['log']}")
    c = result["chosen"]
    what = "chose" if result["finished"] else f"still tuning after {result['samples']} samples; best so far"
    return (f"autotune: {what}: cycle time {c['cycle_time_ms']:g} ms, fusion threshold "
            f"{c['tensor_fusion_threshold_mb']:g} MB, response cache "
            f"{'on' if c['cache_enabled'] else 'off'}, hierarchical allreduce "
            f"{'on' if c['hierarchical_allreduce'] else 'off'} ({result['score']:.1f} bytes/us); "
            f"log: {result['log']}")
