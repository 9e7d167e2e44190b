"""TF baseline owns the plain TensorFlow loop `make bench` takes as the TensorFlow ceiling.

A single-process tf.function training step (GradientTape, SGD) on one random batch, with the
model, threads and timing (``common.monitor.benchmark.measure``) of
``recipes/tensorflow/synthetic_benchmark.py``; N of them side by side are the ceiling that the
recipe at ``-np N`` is measured against.
"""

from __future__ import annotations

import argparse

import numpy as np

from common.config.core import OutputConfig
from common.frameworks.tf_backend import tf
from common.monitor import benchmark
from common.monitor.output import Reporter
from common.world.runtime import threads_per_worker
from recipes.tensorflow.synthetic_benchmark import build_model


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    benchmark.add_flags(parser, "ResNet50", "a keras.applications model name")
    parser.add_argument("--batch-size", type=int, default=32, help="images per step")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (default: all cores)")
    parser.add_argument("--metrics-file", help="append the JSON benchmark record here")
    args = parser.parse_args(argv)
    benchmark.check_args(args)

    threads = threads_per_worker(1, args.threads)
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    tf.random.set_seed(42)
    model = build_model(args.model, args.image_size, args.num_classes)
    optimizer = tf.keras.optimizers.SGD(0.01, momentum=0.9)
    loss_fn = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    rng = np.random.default_rng(42)
    x = tf.constant(rng.random((args.batch_size, args.image_size, args.image_size, 3),
                               dtype=np.float32))
    y = tf.constant(rng.integers(0, args.num_classes, args.batch_size))

    @tf.function
    def step() -> tf.Tensor:
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
        return loss

    def run(batches: int) -> None:
        loss = None
        for _ in range(batches):
            loss = step()
        if loss is not None:
            loss.numpy()  # wait for the device

    out = Reporter(True, OutputConfig(metrics_file=args.metrics_file, progress=False))
    out.print(f"tensorflow plain: {args.model}, {args.image_size}px, batch {args.batch_size}, "
              f"{threads} thread(s)")
    run(1)  # traces the tf.function
    benchmark.measure(run, args.batch_size, args, out, lambda v: np.asarray(v, np.float64), 1,
                      recipe="tensorflow_plain", model=args.model, image_size=args.image_size,
                      batch_size=args.batch_size)


if __name__ == "__main__":
    main()
