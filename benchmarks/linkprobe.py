"""Linkprobe owns measuring the link between workers as Horovod's allreduce sees it: latency and bandwidth.

Run it under the launcher, across the hosts whose link you want:

    horovodrun -np 2 -H hostA:1,hostB:1 python -m benchmarks.linkprobe [--out link.json]

Every rank allreduces float32 buffers from 4 KB to 64 MB (``--max-mb``; one name per size, so
nothing is fused), ``--repeats`` times each after one untimed round, and rank 0 fits the median
times to t = a + b x bytes by least squares on the relative error. With the ring's counts
(2(N-1) messages per allreduce, 2(N-1)/N of the bytes sent by each rank), a gives the latency
per message and b the bandwidth, as ``benchmarks.projection.Link`` takes them. They include
what Horovod adds (a cycle's wait, the reduction's arithmetic) and the recipes' runtime
settings (``common.world.runtime``: Open MPI yielding instead of spinning, Gloo's cycle time),
as training sees it. Rank 0 prints one line and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

SIZES = (4 << 10, 64 << 10, 1 << 20, 4 << 20, 16 << 20, 64 << 20)


def fit(samples: list[tuple[float, float]], n: int) -> dict:
    """Latency per message and bandwidth from (bytes, seconds) pairs of ``n``-rank allreduces.

    Least squares on the relative error (each sample weighted 1/t^2): the sizes span four
    orders of magnitude, and a plain fit would let the largest decide the intercept alone."""
    ws = [1 / t ** 2 for _, t in samples]
    sw = sum(ws)
    mx = sum(w * b for w, (b, _) in zip(ws, samples, strict=True)) / sw
    my = sum(w * t for w, (_, t) in zip(ws, samples, strict=True)) / sw
    slope = (sum(w * (b - mx) * (t - my) for w, (b, t) in zip(ws, samples, strict=True))
             / sum(w * (b - mx) ** 2 for w, (b, _) in zip(ws, samples, strict=True)))
    intercept = my - slope * mx
    steps = 2 * (n - 1)
    return {"latency_s": max(intercept, 0.0) / steps,
            "bits_per_s": steps / n * 8 / slope if slope > 0 else float("inf"),
            "intercept_s": intercept, "seconds_per_byte": slope}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5, help="timed allreduces per size")
    p.add_argument("--max-mb", type=float, default=64, help="the largest buffer, in MB")
    p.add_argument("--out", help="JSON file for rank 0's result")
    a = p.parse_args(argv)

    import horovod.torch as hvd
    import torch

    from common.world.runtime import init_horovod, settings_line

    init_horovod(hvd)  # the runtime settings a recipe runs with (Open MPI's yield, Gloo's cycle)
    n = hvd.size()
    if n < 2:
        print("linkprobe: run it on 2 or more workers (a link has two ends)", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    sizes = [s for s in SIZES if s <= a.max_mb * (1 << 20)]
    samples = []
    for size in sizes:
        buf = torch.ones(size // 4, dtype=torch.float32)
        hvd.allreduce(buf, op=hvd.Sum, name=f"probe.{size}")  # untimed: buffers, connections
        times = []
        for _ in range(a.repeats):
            began = time.perf_counter()
            hvd.allreduce(buf, op=hvd.Sum, name=f"probe.{size}")
            times.append(time.perf_counter() - began)
        samples.append((size, statistics.median(times)))
    # The slowest rank's view: every rank's medians, the largest per size.
    every = hvd.allgather_object(samples)
    worst = [(size, max(r[i][1] for r in every)) for i, (size, _) in enumerate(samples)]
    if hvd.rank() == 0:
        link = fit(worst, n)
        result = {"date": time.strftime("%Y-%m-%d"), "workers": n, **link,
                  "samples": [{"bytes": b, "seconds": t} for b, t in worst]}
        print(settings_line() or "runtime settings: none", flush=True)
        print(f"linkprobe: {n} workers: {link['bits_per_s'] / 1e9:.3g} Gbit/s, "
              f"{link['latency_s'] * 1e6:.0f} us per message (the allreduce's fit: "
              f"{link['intercept_s'] * 1e3:.2f} ms + {link['seconds_per_byte'] * 1e9:.3f} ns/byte)",
              flush=True)
        if a.out:
            Path(a.out).write_text(json.dumps(result, indent=1) + "\n")
    hvd.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
