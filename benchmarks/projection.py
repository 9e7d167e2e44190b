"""Projection owns the scaling projection: efficiency at N workers from one step, its gradient bytes, a link.

The cost model, for data parallelism with Horovod's allreduce:

* Horovod fuses the gradients that are ready in one cycle (``HOROVOD_CYCLE_TIME``, 1 ms by
  default) into buffers of at most ``HOROVOD_FUSION_THRESHOLD`` bytes (128 MiB by default in
  0.28) and allreduces each buffer. What carries the allreduce: on CPU tensors under the MPI
  controller ``MPI_Allreduce`` (Open MPI picks its algorithm by message size and ranks; for
  large messages a ring or reduce-scatter + allgather, both moving 2(N-1)/N of the buffer per
  rank), under Gloo Gloo's ``allreduce``; on GPUs NCCL (ring or tree). The model takes the ring:
  each buffer is 2(N-1) steps of one message of 1/N of it, so it costs 2(N-1) x latency
  + 2(N-1)/N x bytes / bandwidth, whatever N is beyond the latency term.
* The allreduces run on Horovod's background thread while the backward pass goes on: up to
  ``overlap`` x the step is hidden. At best that is the backward's share (a backward costs
  about twice the forward: 2/3), where the backward runs on a GPU and the thread has a core to
  itself; CPU workers, whose backward fills every core, hid next to nothing when measured
  against shaped links (:data:`CPU_OVERLAP`, the scaling report's default).
* Efficiency at N = step at 1 / (the compute step + the communication not hidden). The compute
  step is a worker's step on several workers without its wait for the allreduce, where one was
  measured (what being distributed costs besides the link), else the step at 1.

The step and the gradient bytes come from a measured one-worker run (the final record's
``step_s_by_rank`` and ``gradient_bytes``); the link is given (``10Gbit,50us``) or measured by
``benchmarks.linkprobe`` between two workers.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path

HOROVOD_FUSION_BYTES = 128 * 1024 * 1024  # Horovod 0.28's default HOROVOD_FUSION_THRESHOLD
BACKWARD_SHARE = 2 / 3  # of a step: what the allreduces can run beside, at best (GPUs)
# What CPU workers hide, measured against tc-shaped links (2026-12-07, docs/monitoring.md):
# their backward fills every core, and Horovod's thread must share them, so next to nothing.
CPU_OVERLAP = 0.0

_RATE = re.compile(r"^\s*([0-9.]+)\s*([kmgt]?)(bit|b)(?:/s|ps)?\s*$", re.IGNORECASE)
_TIME = re.compile(r"^\s*([0-9.]+)\s*(s|ms|us|µs|ns)\s*$", re.IGNORECASE)
_SCALE = {"": 1, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}
_SECONDS = {"s": 1, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}


@dataclass(frozen=True)
class Link:
    """A network link: bandwidth in bits per second and one-way latency per message."""

    bits_per_s: float
    latency_s: float = 0.0

    @classmethod
    def parse(cls, text: str) -> Link:
        """``10Gbit``, ``100Mbit,0.5ms``, ``25gbit,20us`` (bit rates; ``B`` for bytes)."""
        rate, _, latency = text.partition(",")
        m = _RATE.match(rate)
        if not m:
            raise ValueError(f"bad link {text!r}: give a bandwidth and optionally a latency, "
                             "e.g. 10Gbit or 100Mbit,0.5ms")
        bits = float(m.group(1)) * _SCALE[m.group(2).lower()] * (8 if m.group(3) == "B" else 1)
        seconds = 0.0
        if latency.strip():
            t = _TIME.match(latency)
            if not t:
                raise ValueError(f"bad latency {latency!r} in link {text!r}: e.g. 0.5ms or 50us")
            seconds = float(t.group(1)) * _SECONDS[t.group(2).lower()]
        if bits <= 0:
            raise ValueError(f"bad link {text!r}: the bandwidth must be above 0")
        return cls(bits, seconds)

    @property
    def label(self) -> str:
        for unit, scale in (("Tbit/s", 1e12), ("Gbit/s", 1e9), ("Mbit/s", 1e6), ("kbit/s", 1e3)):
            if self.bits_per_s >= scale:
                rate = f"{self.bits_per_s / scale:.3g} {unit}"
                break
        else:
            rate = f"{self.bits_per_s:g} bit/s"
        return f"{rate}, {self.latency_s * 1e6:.3g} us" if self.latency_s else rate


def ring_allreduce_s(n: int, nbytes: float, link: Link,
                     fusion_bytes: float = HOROVOD_FUSION_BYTES) -> float:
    """Seconds to allreduce ``nbytes`` over ``n`` workers in fused buffers by the ring."""
    if n < 2 or nbytes <= 0:
        return 0.0
    buffers = max(1, math.ceil(nbytes / fusion_bytes))
    return (buffers * 2 * (n - 1) * link.latency_s
            + 2 * (n - 1) / n * nbytes * 8 / link.bits_per_s)


def efficiency(n: int, step_s: float, nbytes: float, link: Link,
               overlap: float = BACKWARD_SHARE, fusion_bytes: float = HOROVOD_FUSION_BYTES,
               compute_s: float | None = None) -> float:
    """Predicted scaling efficiency at ``n`` workers (1.0 at one).

    ``compute_s``: a worker's step when it runs with others, without its wait for the
    allreduce (measured on a multi-worker run: what being distributed costs besides the link,
    Horovod's thread and its negotiation); the one-worker ``step_s`` when not given."""
    if n < 2:
        return 1.0
    compute = step_s if compute_s is None else compute_s
    exposed = max(ring_allreduce_s(n, nbytes, link, fusion_bytes) - overlap * compute, 0.0)
    return min(step_s / (compute + exposed), 1.0)


def project(counts: list[int], step_s: float, nbytes: float, links: list[Link],
            overlap: float = BACKWARD_SHARE, compute_s: float | None = None) -> list[dict]:
    """One row per link and worker count: the allreduce's time and the predicted efficiency,
    with the overlap given and with none hidden."""
    return [{"link": link.label, "bits_per_s": link.bits_per_s, "latency_s": link.latency_s,
             "workers": n, "allreduce_s": ring_allreduce_s(n, nbytes, link),
             "efficiency": efficiency(n, step_s, nbytes, link, overlap, compute_s=compute_s),
             "efficiency_no_overlap": efficiency(n, step_s, nbytes, link, 0.0,
                                                 compute_s=compute_s),
             "efficiency_backward_hidden": efficiency(n, step_s, nbytes, link, BACKWARD_SHARE,
                                                      compute_s=compute_s)}
            for link in links for n in counts]


def table(rows: list[dict], step_s: float, nbytes: float, overlap: float) -> str:
    lines = [f"One worker's step {step_s * 1e3:.1f} ms, {nbytes / 1e6:.1f} MB of gradients "
             f"per step, up to {overlap:.0%} of the step hidden behind the allreduce.", "",
             "| link | workers | allreduce per step | predicted efficiency | nothing hidden | "
             "2/3 of the step hidden (GPU-like) |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['link']} | {r['workers']} | {r['allreduce_s'] * 1e3:.1f} ms | "
                     f"{r['efficiency']:.0%} | {r['efficiency_no_overlap']:.0%} | "
                     f"{r['efficiency_backward_hidden']:.0%} |")
    return "\n".join(lines)


def chart(rows: list[dict], path: Path, title: str, measured: list[dict] | None = None) -> None:
    """Predicted efficiency against workers, a line per link (dotted: 2/3 of the step hidden),
    and any ``measured`` points ({"link", "workers", "efficiency"})."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, link in enumerate(dict.fromkeys(r["link"] for r in rows)):
        mine = [r for r in rows if r["link"] == link]
        ns = [r["workers"] for r in mine]
        ax.plot(ns, [100 * r["efficiency"] for r in mine], "o-", color=f"C{i}", label=link)
        ax.plot(ns, [100 * r["efficiency_backward_hidden"] for r in mine], ":", color=f"C{i}")
        for m in measured or ():
            if m["link"] == link:
                ax.plot(m["workers"], 100 * m["efficiency"], "x", color=f"C{i}", ms=10, mew=2)
    ax.set_xscale("log", base=2)
    ax.set(xlabel="workers", ylabel="% of ideal", ylim=(0, 105),
           title="predicted scaling efficiency (dotted: 2/3 hidden; x: measured)")
    ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def compare(reports: list[Path], out: Path) -> list[dict]:
    """Several scaling reports, each run over one link (``--link`` given or measured), as one
    table of measured against predicted efficiency (``out``.md) and one chart (``out``.png);
    returns the compared rows ({"link", "workers", "measured", "predicted"})."""
    rows, points, lines, dates = [], [], [], set()
    for path in reports:
        result = json.loads(Path(path).read_text())
        dates.add(result["date"])
        got = result["projection"]
        rows += got["rows"]
        by = {(r["link"], r["workers"]): r for r in got["rows"]}
        for m in got["measured"]:
            r = by[(m["link"], m["workers"])]
            points.append(m)
            lines.append({"link": m["link"], "workers": m["workers"], "measured": m["efficiency"],
                          "predicted": r["efficiency"], "allreduce_s": r["allreduce_s"],
                          "step_s": got["step_s"], "compute_s": got.get("compute_s")})
    text = ["| link (measured) | workers | one worker's step | allreduce per step (model) | "
            "measured efficiency | predicted | difference |", "|---|---|---|---|---|---|---|"]
    for r in lines:
        text.append(f"| {r['link']} | {r['workers']} | {r['step_s'] * 1e3:.0f} ms | "
                    f"{r['allreduce_s'] * 1e3:.1f} ms | {r['measured']:.0%} | "
                    f"{r['predicted']:.0%} | {100 * (r['predicted'] - r['measured']):+.0f} points |")
    out.with_suffix(".md").write_text("\n".join(text) + "\n")
    chart(rows, out.with_suffix(".png"), f"scaling reports of {', '.join(sorted(dates))}", points)
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Measured against predicted scaling efficiency, "
                                            "from scaling reports run over different links")
    p.add_argument("reports", nargs="+", type=Path, help="scaling.json files (--project, one --link)")
    p.add_argument("--out", type=Path, required=True, help="OUT.md and OUT.png are written")
    a = p.parse_args(argv)
    try:
        lines = compare(a.reports, a.out)
    except (OSError, KeyError, ValueError) as e:
        print(f"projection: cannot compare {' '.join(map(str, a.reports))}: {e!r}", file=sys.stderr)
        return 2
    print(a.out.with_suffix(".md").read_text(), end="")
    print(f"wrote {a.out.with_suffix('.md')} and {a.out.with_suffix('.png')}")
    return 0 if lines else 1


if __name__ == "__main__":
    sys.exit(main())
