"""Benchmark owns both frameworks' synthetic throughput benchmarks: flags, timing loop, summary.

As Horovod's own benchmark does it: warm-up batches first, then ``--num-iters`` timed
iterations of ``--num-batches-per-iter`` batches each. Each iteration's images/s is measured on
every worker; the total is the sum over workers (allreduced, not assumed equal), reported as the
mean with a 95% confidence interval (1.96 standard deviations of the iterations), on stdout and,
with ``--metrics-file``, as a JSON record of type ``"benchmark"``.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from common.config.core import ConfigError, TrainConfig
from common.monitor.metrics import mean_ci95
from common.monitor.output import Reporter
from common.world.runtime import SETTINGS, settings_line


def add_flags(parser: argparse.ArgumentParser, default_model: str, model_help: str) -> None:
    """The benchmark's flags: model, image size and timing loop."""
    b = parser.add_argument_group("benchmark")
    b.add_argument("--model", default=default_model, help=model_help)
    b.add_argument("--image-size", type=int, default=224, help="image side in pixels")
    b.add_argument("--num-classes", type=int, default=1000, help="classifier outputs")
    b.add_argument("--num-warmup-batches", type=int, default=10,
                   help="untimed batches before measuring")
    b.add_argument("--num-batches-per-iter", type=int, default=10,
                   help="batches per timed iteration")
    b.add_argument("--num-iters", type=int, default=10, help="timed iterations")


def check_args(args: argparse.Namespace, cfg: TrainConfig | None = None) -> None:
    # The timeline's summary and the autotuner's choice are read by the training loop.
    if cfg is not None:
        cfg.require_defaults("the synthetic benchmarks (use a training recipe with --max-steps)",
                             "timeline_out", "autotune")
    if args.num_iters < 1 or args.num_batches_per_iter < 1 or args.num_warmup_batches < 0:
        raise ConfigError("--num-iters and --num-batches-per-iter must be >= 1, "
                          "--num-warmup-batches >= 0")
    if args.image_size < 8 or args.num_classes < 1:
        raise ConfigError("--image-size must be >= 8 and --num-classes >= 1")


def measure(run: Callable[[int], None], images_per_batch: int, args: argparse.Namespace,
            out: Reporter, allreduce_sum: Callable[[np.ndarray], np.ndarray], world_size: int,
            **fields: Any) -> dict[str, Any]:
    """Time ``run(batches)`` (which must wait for the device before returning); summarise.

    A collective at the end: each iteration's images/s are summed over ranks."""
    if SETTINGS:
        out.print(settings_line())
    run(args.num_warmup_batches)
    rates = []
    for i in range(args.num_iters):
        t0 = time.perf_counter()
        run(args.num_batches_per_iter)
        rates.append(images_per_batch * args.num_batches_per_iter / (time.perf_counter() - t0))
        out.print(f"iter #{i}: {rates[-1]:.1f} img/s per worker")
    totals = allreduce_sum(np.asarray(rates, dtype=np.float64))
    w_mean, w_ci = mean_ci95(totals / world_size)
    t_mean, t_ci = mean_ci95(totals)
    out.print(f"img/s per worker: {w_mean:.1f} +- {w_ci:.1f}")
    out.print(f"total img/s on {world_size} worker(s): {t_mean:.1f} +- {t_ci:.1f}")
    rec = dict(fields, world_size=world_size, iterations=len(rates),
               batches_per_iter=args.num_batches_per_iter,
               img_per_sec_per_worker=w_mean, img_per_sec_per_worker_ci95=w_ci,
               img_per_sec_total=t_mean, img_per_sec_total_ci95=t_ci)
    if SETTINGS:
        rec["runtime_settings"] = dict(SETTINGS)
    out.record("benchmark", **rec)
    return rec
