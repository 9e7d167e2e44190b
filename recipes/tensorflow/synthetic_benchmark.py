"""Synthetic benchmark (TensorFlow): training images/s of a keras.applications model, per worker and in all.

Run:  horovodrun -np 2 python recipes/tensorflow/synthetic_benchmark.py --model ResNet50

The same measurement and output as recipes/pytorch/synthetic_benchmark.py (common/monitor/benchmark.py)
through the core's tf.function train step with Horovod's DistributedGradientTape
(common/frameworks/tf_backend.py), or with --keras-fit through Keras 3's model.fit and the core's
distributed Keras optimizer (common/frameworks/keras_optimizer.py): images/s per worker and summed
over workers, mean and 95% interval, with --metrics-file a JSON record of type "benchmark".
"""

from __future__ import annotations

from common.config import ConfigError, core_parser, parse_config
from common.data.datasets import ArrayDataset
from common.faults.ending import run_main
from common.frameworks.tf_backend import TFBackend, init, sgd, tf
from common.loop import keras_fit
from common.monitor import benchmark
from common.monitor.output import Reporter

import numpy as np

RECIPE = "tensorflow/synthetic_benchmark"


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
    benchmark.add_flags(parser, "ResNet50", "a keras.applications model name")
    parser.add_argument("--keras-fit", action="store_true",
                        help="time model.fit (the core's distributed Keras optimizer) instead of "
                        "the custom loop's step (Horovod's DistributedGradientTape)")
    cfg, args = parse_config(parser, argv)
    benchmark.check_args(args, cfg)
    rt = init(cfg)  # distributed
    out = Reporter(rt.is_root, cfg.output)

    model = build_model(args.model, args.image_size, args.num_classes)
    passes = cfg.gradients.batches_per_allreduce
    n = cfg.run.batch_size * passes
    rng = np.random.default_rng(cfg.run.seed)
    data = ArrayDataset(rng.random((n, args.image_size, args.image_size, 3), dtype=np.float32),
                        rng.integers(0, args.num_classes, n), "synthetic")
    loss_fn = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    if args.keras_fit:
        model.compile(optimizer=keras_fit.sgd(cfg), loss=loss_fn)  # distributed
        backend = keras_fit.compiled_backend(rt, cfg, model, data, data)
    else:
        # --base-lr, --momentum (the core adds --weight-decay)
        backend = TFBackend(rt, cfg, model, sgd(cfg), loss_fn, data, data)
    backend.broadcast_state()  # distributed
    x, y = tf.constant(data.inputs), tf.constant(data.labels)
    passes_ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(cfg.run.batch_size).repeat()

    def run(batches: int) -> None:
        if args.keras_fit and batches:  # one Keras batch is one pass; fit waits for the device
            model.fit(passes_ds, steps_per_epoch=batches * passes, epochs=1, verbose=0)
            return
        for _ in range(batches):
            counters = backend.train_step((x, y))
        if batches:
            backend.read_counters(counters)  # wait for the device

    out.print(f"{RECIPE}: {args.model}, {args.image_size}px, batch {cfg.run.batch_size} x "
              f"{cfg.gradients.batches_per_allreduce} per step, {rt.size} worker(s), "
              f"fp16 allreduce {cfg.gradients.fp16_allreduce}, adasum {cfg.gradients.use_adasum}")
    run(1)  # traces the tf.function
    benchmark.measure(run, n, args, out, backend.allreduce_sum, rt.size,  # distributed
                      recipe=RECIPE, model=args.model, image_size=args.image_size,
                      batch_size=cfg.run.batch_size,
                      batches_per_allreduce=cfg.gradients.batches_per_allreduce,
                      device="gpu" if tf.config.list_physical_devices("GPU") else "cpu",
                      fp16_allreduce=cfg.gradients.fp16_allreduce,
                      use_adasum=cfg.gradients.use_adasum,
                      loop="keras-fit" if args.keras_fit else "tape")


if __name__ == "__main__":
    run_main(main)
