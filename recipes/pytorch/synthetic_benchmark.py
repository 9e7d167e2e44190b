"""Synthetic benchmark (PyTorch): training images/s of any torchvision model, per worker and in all.

Run:  horovodrun -np 2 python recipes/pytorch/synthetic_benchmark.py --model resnet50

As Horovod's own benchmark does it: warm-up batches first, then --num-iters timed iterations of
--num-batches-per-iter batches each. Each iteration's images/s is measured on every worker; the
total is the sum over workers (allreduced, not assumed equal). Reported as the mean with a 95%
confidence interval (1.96 standard deviations of the iterations), on stdout and, with
--metrics-file, as a JSON record of type "benchmark".
"""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F

from common import torch_backend as tb
from common.config import ConfigError, core_parser, parse_config
from common.failure import run_main
from common.output import Reporter
from recipes.pytorch.imagenet_resnet50 import build_model

RECIPE = "pytorch/synthetic_benchmark"


def mean_ci(values) -> tuple[float, float]:
    """Mean and half-width of a 95% interval (1.96 sample standard deviations)."""
    a = np.asarray(values, dtype=np.float64)
    return float(a.mean()), float(1.96 * a.std(ddof=1)) if len(a) > 1 else 0.0


def main(argv: list[str] | None = None) -> None:
    parser = core_parser(__doc__.splitlines()[0], batch_size=32, base_lr=0.01)
    parser.add_argument("--model", default="resnet50", help="any torchvision model name")
    parser.add_argument("--image-size", type=int, default=224, help="image side in pixels")
    parser.add_argument("--num-classes", type=int, default=1000, help="classifier outputs")
    parser.add_argument("--num-warmup-batches", type=int, default=10,
                        help="untimed batches before measuring")
    parser.add_argument("--num-batches-per-iter", type=int, default=10,
                        help="batches per timed iteration")
    parser.add_argument("--num-iters", type=int, default=10, help="timed iterations")
    cfg, args = parse_config(parser, argv)
    if args.num_iters < 1 or args.num_batches_per_iter < 1 or args.num_warmup_batches < 0:
        raise ConfigError("--num-iters and --num-batches-per-iter must be >= 1, "
                          "--num-warmup-batches >= 0")
    rt, device = tb.init(cfg)  # distributed
    out = Reporter(rt.is_root, cfg.metrics_file, progress=False)
    precision = tb.Precision(cfg.amp, device)
    if precision.notice:
        out.print(f"note: {precision.notice}")

    model = build_model(args.model, args.num_classes).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.base_lr, momentum=cfg.momentum)
    optimizer = tb.distributed_optimizer(optimizer, model, cfg)  # distributed
    tb.broadcast_training_state(model, optimizer)  # distributed
    step_batch = cfg.batch_size * cfg.batches_per_allreduce
    x = torch.randn(step_batch, 3, args.image_size, args.image_size, device=device)
    y = torch.randint(0, args.num_classes, (step_batch,), device=device)

    def run(batches: int) -> None:
        for _ in range(batches):
            tb.train_step(model, optimizer, F.cross_entropy, x, y, cfg.batches_per_allreduce,
                          precision)
        if device.type == "cuda":
            torch.cuda.synchronize()

    out.print(f"{RECIPE}: {args.model}, {args.image_size}px, batch {cfg.batch_size} x "
              f"{cfg.batches_per_allreduce} per step, {rt.size} worker(s), {device.type}, "
              f"fp16 allreduce {cfg.fp16_allreduce}, adasum {cfg.use_adasum}")
    run(args.num_warmup_batches)
    per_worker = []
    for i in range(args.num_iters):
        t0 = time.perf_counter()
        run(args.num_batches_per_iter)
        rate = step_batch * args.num_batches_per_iter / (time.perf_counter() - t0)
        per_worker.append(rate)
        out.print(f"iter #{i}: {rate:.1f} img/s per worker")
    totals = tb.allreduce_sum(np.array(per_worker))  # distributed: sum of the workers' rates
    w_mean, w_ci = mean_ci(totals / rt.size)
    t_mean, t_ci = mean_ci(totals)
    out.print(f"img/s per worker: {w_mean:.1f} +- {w_ci:.1f}")
    out.print(f"total img/s on {rt.size} worker(s): {t_mean:.1f} +- {t_ci:.1f}")
    out.record("benchmark", recipe=RECIPE, model=args.model, image_size=args.image_size,
               batch_size=cfg.batch_size, batches_per_allreduce=cfg.batches_per_allreduce,
               world_size=rt.size, device=device.type, fp16_allreduce=cfg.fp16_allreduce,
               use_adasum=cfg.use_adasum, amp=precision.enabled,
               img_per_sec_per_worker=w_mean, img_per_sec_per_worker_ci95=w_ci,
               img_per_sec_total=t_mean, img_per_sec_total_ci95=t_ci,
               iterations=args.num_iters, batches_per_iter=args.num_batches_per_iter)


if __name__ == "__main__":
    run_main(main)
