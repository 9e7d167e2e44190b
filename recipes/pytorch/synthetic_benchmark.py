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

import torch
import torch.nn.functional as F

from common import torch_backend as tb
from common.config import add_benchmark_flags, check_benchmark_args, core_parser, parse_config
from common.failure import run_main
from common.output import Reporter
from recipes.pytorch.imagenet_resnet50 import build_model

RECIPE = "pytorch/synthetic_benchmark"


def main(argv: list[str] | None = None) -> None:
    parser = core_parser(__doc__.splitlines()[0], batch_size=32, base_lr=0.01)
    add_benchmark_flags(parser, "resnet50", "any torchvision model name")
    cfg, args = parse_config(parser, argv)
    check_benchmark_args(args)
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
    out.benchmark(per_worker, tb.allreduce_sum, rt.size,  # distributed: summed over workers
                  recipe=RECIPE, model=args.model, image_size=args.image_size,
                  batch_size=cfg.batch_size, batches_per_allreduce=cfg.batches_per_allreduce,
                  device=device.type, fp16_allreduce=cfg.fp16_allreduce,
                  use_adasum=cfg.use_adasum, amp=precision.enabled,
                  batches_per_iter=args.num_batches_per_iter)

if __name__ == "__main__":
    run_main(main)
