"""Torch baseline owns the non-Horovod PyTorch runs `make bench` compares with: a plain loop and DDP.

Alone (``python -m benchmarks.torch_baseline``) it is a plain single-process PyTorch training
loop (on the GPU if there is one, ``--amp`` for bf16 autocast): N of them side by side are the
ceiling, and on a GPU it is what the recipe's single-GPU throughput is compared with. Under
``torchrun --nproc_per_node N`` it is the same loop with the model in
``DistributedDataParallel`` over ``torch.distributed``'s gloo backend: the native tool a user
would otherwise pick. The model, the random batch, the SGD step and the timing
(``common.monitor.benchmark.measure``: warm-up batches, then timed iterations, img/s summed over
workers) are those of ``recipes/pytorch/synthetic_benchmark.py``.
"""

from __future__ import annotations

import argparse
import os

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from common.config.core import OutputConfig
from common.monitor import benchmark
from common.monitor.output import Reporter
from common.world.runtime import threads_per_worker
from recipes.pytorch.imagenet_resnet50 import build_model


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    benchmark.add_flags(parser, "resnet18", "any torchvision model name")
    parser.add_argument("--batch-size", type=int, default=32, help="images per worker per step")
    parser.add_argument("--threads", type=int, default=0,
                        help="CPU threads per worker (default: cores / local workers)")
    parser.add_argument("--amp", action="store_true", help="bf16 autocast (CUDA only)")
    parser.add_argument("--metrics-file", help="append the JSON benchmark record here")
    args = parser.parse_args(argv)
    benchmark.check_args(args)

    distributed = "LOCAL_WORLD_SIZE" in os.environ  # set by torchrun
    local_size = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    torch.set_num_threads(threads_per_worker(local_size, args.threads))
    if distributed:
        dist.init_process_group("gloo")
    rank, size = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(42)
    model = build_model(args.model, args.num_classes).to(device)
    if distributed:
        model = torch.nn.parallel.DistributedDataParallel(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(args.batch_size, 3, args.image_size, args.image_size, device=device)
    y = torch.randint(0, args.num_classes, (args.batch_size,), device=device)
    amp = args.amp and device.type == "cuda"

    def run(batches: int) -> None:
        model.train()
        for _ in range(batches):
            optimizer.zero_grad()
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                loss = F.cross_entropy(model(x), y)
            loss.backward()
            optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()

    def allreduce_sum(values: np.ndarray) -> np.ndarray:
        t = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float64))
        if distributed:
            dist.all_reduce(t)
        return t.numpy()

    out = Reporter(rank == 0, OutputConfig(metrics_file=args.metrics_file, progress=False))
    kind = "ddp" if distributed else "plain"
    out.print(f"torch {kind}: {args.model}, {args.image_size}px, batch {args.batch_size}, "
              f"{size} worker(s), {device.type}, amp {amp}, {torch.get_num_threads()} thread(s) each")
    benchmark.measure(run, args.batch_size, args, out, allreduce_sum, size, recipe=f"torch_{kind}",
                      model=args.model, image_size=args.image_size, batch_size=args.batch_size,
                      device=device.type, amp=amp)
    if distributed:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
