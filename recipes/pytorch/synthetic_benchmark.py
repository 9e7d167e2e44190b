"""Synthetic benchmark (PyTorch): training images/s of any torchvision model, per worker and in all.

Run:  horovodrun -np 2 python recipes/pytorch/synthetic_benchmark.py --model resnet50

The core's train step (common/frameworks/torch_backend.py) on one random batch, timed as Horovod's own
benchmark does it (common/monitor/benchmark.py): warm-up batches, then --num-iters timed iterations of
--num-batches-per-iter batches; images/s per worker and summed over workers, mean and 95%
interval, with --metrics-file a JSON record of type "benchmark".
"""

from __future__ import annotations

from common.config import core_parser, parse_config
from common.faults.ending import run_main
from common.frameworks.torch_backend import TorchBackend, init, sgd
from common.monitor import benchmark
from common.monitor.output import Reporter

import torch
import torch.nn.functional as F

from recipes.pytorch.imagenet_resnet50 import build_model

RECIPE = "pytorch/synthetic_benchmark"


def main(argv: list[str] | None = None) -> None:
    parser = core_parser(__doc__.splitlines()[0], batch_size=32, base_lr=0.01)
    benchmark.add_flags(parser, "resnet50", "any torchvision model name")
    cfg, args = parse_config(parser, argv)
    benchmark.check_args(args, cfg)
    rt = init(cfg)  # distributed
    out = Reporter(rt.is_root, cfg.output)

    model = build_model(args.model, args.num_classes).to(rt.device)
    optimizer = sgd(model, cfg)  # distributed: the flags' SGD, averaging gradients
    step_batch = cfg.run.batch_size * cfg.gradients.batches_per_allreduce
    x = torch.randn(step_batch, 3, args.image_size, args.image_size, device=rt.device)
    y = torch.randint(0, args.num_classes, (step_batch,), device=rt.device)
    data = torch.utils.data.TensorDataset(x, y)
    backend = TorchBackend(rt, cfg, model, optimizer, F.cross_entropy, data, data)
    backend.broadcast_state()  # distributed
    for notice in backend.notices:
        out.print(f"note: {notice}")

    def run(batches: int) -> None:
        for _ in range(batches):
            backend.train_step((x, y))
        if x.is_cuda:
            torch.cuda.synchronize()

    out.print(f"{RECIPE}: {args.model}, {args.image_size}px, batch {cfg.run.batch_size} x "
              f"{cfg.gradients.batches_per_allreduce} per step, {rt.size} worker(s), "
              f"{x.device.type}, fp16 allreduce {cfg.gradients.fp16_allreduce}, "
              f"adasum {cfg.gradients.use_adasum}")
    benchmark.measure(run, step_batch, args, out, backend.allreduce_sum, rt.size,  # distributed
                      recipe=RECIPE, model=args.model, image_size=args.image_size,
                      batch_size=cfg.run.batch_size,
                      batches_per_allreduce=cfg.gradients.batches_per_allreduce,
                      device=x.device.type, fp16_allreduce=cfg.gradients.fp16_allreduce,
                      use_adasum=cfg.gradients.use_adasum, amp=backend.precision.enabled)


if __name__ == "__main__":
    run_main(main)
