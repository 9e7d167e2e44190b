"""Synthetic benchmark (TensorFlow): training images/s of a keras.applications model, per worker and in all.

Run:  horovodrun -np 2 python recipes/tensorflow/synthetic_benchmark.py --model ResNet50

The same measurement and output as recipes/pytorch/synthetic_benchmark.py: warm-up batches,
then --num-iters timed iterations of --num-batches-per-iter batches through a tf.function step
with Horovod's DistributedGradientTape; images/s per worker and summed over workers, mean and
95% interval, with --metrics-file a JSON record of type "benchmark".
"""

from __future__ import annotations

import time

from common import tf_backend as tfb
from common.config import (
    ConfigError,
    add_benchmark_flags,
    check_benchmark_args,
    core_parser,
    parse_config,
)
from common.failure import run_main
from common.output import Reporter
from common.tf_training import make_train_step

RECIPE = "tensorflow/synthetic_benchmark"
tf = tfb.tf


def build_model(name: str, image_size: int, num_classes: int):
    """Any keras.applications model, untrained, returning logits."""
    factory = getattr(tf.keras.applications, name, None)
    if not callable(factory):
        raise ConfigError(f"--model {name!r} is not in keras.applications "
                          "(e.g. ResNet50, MobileNetV2, EfficientNetB0)")
    return factory(weights=None, input_shape=(image_size, image_size, 3), classes=num_classes,
                   classifier_activation=None)


def main(argv: list[str] | None = None) -> None:
    parser = core_parser(__doc__.splitlines()[0], batch_size=32, base_lr=0.01)
    add_benchmark_flags(parser, "ResNet50", "a keras.applications model name")
    cfg, args = parse_config(parser, argv)
    check_benchmark_args(args)
    rt = tfb.init(cfg)  # distributed
    out = Reporter(rt.is_root, cfg.metrics_file, progress=False)

    model = build_model(args.model, args.image_size, args.num_classes)
    optimizer = tf.keras.optimizers.SGD(cfg.base_lr, momentum=cfg.momentum)
    optimizer.build(model.trainable_variables)
    tfb.broadcast_state(model, optimizer)  # distributed
    step = make_train_step(model, optimizer, cfg)
    n = cfg.batch_size * cfg.batches_per_allreduce
    x = tf.random.uniform((n, args.image_size, args.image_size, 3))
    y = tf.random.uniform((n,), maxval=args.num_classes, dtype=tf.int32)

    def run(batches: int) -> None:
        for _ in range(batches):
            loss, _ = step(x, y)
        if batches:
            float(loss)  # wait for the device

    out.print(f"{RECIPE}: {args.model}, {args.image_size}px, batch {cfg.batch_size} x "
              f"{cfg.batches_per_allreduce} per step, {rt.size} worker(s), "
              f"fp16 allreduce {cfg.fp16_allreduce}, adasum {cfg.use_adasum}")
    run(max(args.num_warmup_batches, 1))  # at least one: traces the tf.function
    rates = []
    for i in range(args.num_iters):
        t0 = time.perf_counter()
        run(args.num_batches_per_iter)
        rates.append(n * args.num_batches_per_iter / (time.perf_counter() - t0))
        out.print(f"iter #{i}: {rates[-1]:.1f} img/s per worker")
    out.benchmark(rates, tfb.allreduce_sum, rt.size,  # distributed: summed over workers
                  recipe=RECIPE, model=args.model, image_size=args.image_size,
                  batch_size=cfg.batch_size, batches_per_allreduce=cfg.batches_per_allreduce,
                  device="gpu" if tf.config.list_physical_devices("GPU") else "cpu",
                  fp16_allreduce=cfg.fp16_allreduce, use_adasum=cfg.use_adasum,
                  batches_per_iter=args.num_batches_per_iter)


if __name__ == "__main__":
    run_main(main)
