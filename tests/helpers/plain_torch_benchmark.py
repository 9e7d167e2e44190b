"""Baseline for recipes/pytorch/synthetic_benchmark.py: the same training on one device, plain PyTorch.

No Horovod, no core: model, SGD with momentum, synthetic batch, optional bf16 autocast, and the
same warm-up / timed-iteration scheme. Prints one JSON line with images/s (mean of iterations).
Used to measure what the recipe's machinery costs on one GPU (see README, "Measured").
"""

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F
import torchvision

p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
p.add_argument("--model", default="resnet50")
p.add_argument("--batch-size", type=int, default=32)
p.add_argument("--image-size", type=int, default=224)
p.add_argument("--num-classes", type=int, default=1000)
p.add_argument("--num-warmup-batches", type=int, default=10)
p.add_argument("--num-batches-per-iter", type=int, default=10)
p.add_argument("--num-iters", type=int, default=10)
p.add_argument("--amp", action="store_true", help="bf16 autocast (CUDA)")
args = p.parse_args()

device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
torch.manual_seed(42)
model = getattr(torchvision.models, args.model)(num_classes=args.num_classes).to(device)
opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
x = torch.randn(args.batch_size, 3, args.image_size, args.image_size, device=device)
y = torch.randint(0, args.num_classes, (args.batch_size,), device=device)


def run(batches):
    for _ in range(batches):
        opt.zero_grad()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.amp):
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize()


run(args.num_warmup_batches)
rates = []
for _ in range(args.num_iters):
    t0 = time.perf_counter()
    run(args.num_batches_per_iter)
    rates.append(args.batch_size * args.num_batches_per_iter / (time.perf_counter() - t0))
print(json.dumps({"type": "plain_benchmark", "model": args.model, "batch_size": args.batch_size,
                  "amp": args.amp, "device": device.type, "img_per_sec": statistics.mean(rates),
                  "img_per_sec_stdev": statistics.stdev(rates) if len(rates) > 1 else 0.0}))
