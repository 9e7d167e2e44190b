"""TF backend owns TensorFlow for the core: Horovod init, the gradient tape, and the loop's Backend.

``init`` starts Horovod and pins threads and a GPU per rank; :class:`TFBackend` is the
``common.frameworks.backend.Backend`` of a Keras model, its optimizer, a loss and in-memory image datasets:
``tf.function`` train and eval steps with Horovod's ``DistributedGradientTape``, variable
broadcast, RNG state and the checkpoint file format (``.npz`` of arrays plus a JSON header,
read with ``allow_pickle=False``). The Keras ``model.fit`` recipes use the same backend for
their state, checkpoints and collectives (``common.loop.keras_fit``).

Works with Keras 3 (the default, custom loop and ``model.fit``) and with tf-keras
(``TF_USE_LEGACY_KERAS=1``): both expose ``model.weights`` and ``optimizer.variables``. Two Keras 3 gaps are
bridged here: Horovod's tape needs ``tf.Variable``s (Keras 3 variables lack ``.ref()``), and
``hvd.broadcast_variables`` cannot assign Keras 3 variables, so each value is broadcast and
assigned.

TensorFlow's C++ log noise is off unless you ask for it: this module sets
``TF_CPP_MIN_LOG_LEVEL=2`` before TensorFlow is imported, unless the variable is already set,
and imports it inside ``common.world.quiet.quiet_stderr`` for the lines printed before that setting
takes effect (``HOROVOD_RECIPES_RAW_OUTPUT=1`` shows them).
"""

from __future__ import annotations

import io
import json
import os
import random

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from common.world.quiet import quiet_stderr  # noqa: E402

with quiet_stderr():  # the start-up lines TF_CPP_MIN_LOG_LEVEL does not reach (common.world.quiet)
    import horovod.tensorflow as hvd
    import tensorflow as tf

    tf.config.list_physical_devices("GPU")  # its first look for GPUs (cuInit) prints too

from common.base.files import CHECKSUM_KEY, CheckpointError, content_digest, verified  # noqa: E402
from common.config.core import ConfigError, TrainConfig  # noqa: E402
from common.faults.watchdog import beat  # noqa: E402
from common.frameworks import tf_sync_bn  # noqa: E402
from common.frameworks.backend import (  # noqa: E402
    Backend,
    check_optimizer_flags,
    norm_stats,
    placed,
    start_horovod,
)
from common.monitor.metrics import CounterLayout, MetricSums  # noqa: E402
from common.world.runtime import Runtime, seed_host_rngs, worker_threads

CHECKPOINT_FORMAT = "horovod-recipes/tf/1"


def init(cfg: TrainConfig, comm=None) -> Runtime:
    """Initialise Horovod, pin threads and GPU for this rank, seed every RNG from the seed."""
    rt = start_horovod(hvd, cfg, comm)
    gpus = tf.config.list_physical_devices("GPU")
    device = "cpu"
    if gpus:  # one GPU per rank, as torch_backend.init picks it
        gpu = gpus[rt.local_rank % len(gpus)]
        tf.config.experimental.set_memory_growth(gpu, True)
        tf.config.set_visible_devices(gpu, "GPU")
        device = "gpu:0"
    policy = mixed_precision_policy(cfg.run.amp, gpus)
    if policy:  # before the recipe builds its model: Keras layers take the policy then
        tf.keras.mixed_precision.set_global_policy(policy)
    threads = worker_threads(rt.local_size, cfg.run.threads_per_worker)
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:  # already initialised (a second init in one process)
        pass
    return placed(hvd, cfg, rt, device, seed_everything)


def mixed_precision_policy(amp: bool, gpus: list) -> str | None:
    """The Keras mixed precision policy ``--amp`` asks for: bf16 compute on GPUs that have it
    (compute capability 8.0 and later), fp16 with loss scaling on older ones; none on CPU."""
    if not (amp and gpus):
        return None
    cc = tf.config.experimental.get_device_details(gpus[0]).get("compute_capability") or (0, 0)
    return "mixed_bfloat16" if tuple(cc) >= (8, 0) else "mixed_float16"


def seed_everything(seed: int) -> None:
    seed_host_rngs(seed)
    tf.random.set_seed(seed)


def sgd(cfg: TrainConfig):
    """The flags' Keras SGD (``--base-lr``, ``--momentum``); ``--weight-decay`` is added to the
    averaged gradients by the core (:func:`with_weight_decay`)."""
    return tf.keras.optimizers.SGD(cfg.schedule.base_lr, momentum=cfg.optimizer.momentum)


def optimizer_momentum(optimizer) -> float | None:
    """The momentum a Keras optimizer applies (None where it has none), through the wrappers
    (Horovod's optimizer is a subclass; a LossScaleOptimizer holds the inner one)."""
    inner = getattr(optimizer, "inner_optimizer", optimizer)
    momentum = getattr(inner, "momentum", None)
    if momentum is None or isinstance(momentum, bool):
        return None
    return float(momentum.numpy() if hasattr(momentum, "numpy") else momentum)


def compression(cfg: TrainConfig):
    return hvd.Compression.fp16 if cfg.gradients.fp16_allreduce else hvd.Compression.none


def distributed_tape(tape: tf.GradientTape, cfg: TrainConfig) -> tf.GradientTape:
    """Wrap a tape in Horovod's DistributedGradientTape with the core's gradient options."""
    g = cfg.gradients
    return hvd.DistributedGradientTape(
        tape, compression=compression(cfg), op=hvd.Adasum if g.use_adasum else hvd.Average,
        gradient_predivide_factor=g.gradient_predivide_factor)


@tf.autograph.experimental.do_not_convert
def with_weight_decay(grads, variables, weight_decay: float, loss_scale=1.0) -> list:
    """``--weight-decay`` as every recipe of both frameworks means it: coupled L2, as in
    ``torch.optim.SGD``: ``weight_decay * w`` joins each averaged gradient, so momentum carries it
    (Keras's own ``weight_decay`` is decoupled: it shrinks the weights apart from the gradient).
    ``loss_scale``: the factor the gradients still carry (a LossScaleOptimizer unscales them)."""
    if not weight_decay:
        return list(grads)
    return [g if g is None else tf.convert_to_tensor(g) + tf.cast(weight_decay * loss_scale, g.dtype)
            * tf.cast(v, g.dtype) for g, v in zip(grads, variables, strict=True)]


class GradNorms:
    """The averaged gradient's norm before clipping (``--clip-grad-norm``), summed in
    variables step by step inside the graph: the epoch's mean, max and share of steps clipped."""

    def __init__(self) -> None:
        self.values = tf.Variable(tf.zeros(4, tf.float64), trainable=False)  # sum, max, clipped, n

    def add(self, norm, clip: float) -> None:
        n = tf.cast(norm, tf.float64)
        v = self.values
        v.assign(tf.stack([v[0] + n, tf.maximum(v[1], n), v[2] + tf.cast(n > clip, tf.float64),
                           v[3] + 1.0]))

    def read(self) -> dict:
        total, top, clipped, steps = self.values.numpy().tolist()
        if not steps:
            return {}
        self.values.assign(tf.zeros(4, tf.float64))
        return norm_stats(total, top, clipped, int(steps))


@tf.autograph.experimental.do_not_convert
def clipped(grads, clip: float, norms: GradNorms, loss_scale=1.0) -> list:
    """``--clip-grad-norm``: the averaged gradients with their global L2 norm clipped to
    ``clip`` (``loss_scale``: the factor they still carry), the norm before clipping noted."""
    scaled, norm = tf.clip_by_global_norm(list(grads), clip * loss_scale)
    norms.add(norm / loss_scale, clip)
    return scaled


def refuse_two_clips(optimizer, clip: float | None) -> None:
    """ConfigError when ``--clip-grad-norm`` meets an optimizer that clips on its own (Keras's
    ``clipnorm``, ``global_clipnorm``, ``clipvalue``: applied per worker, before the average)."""
    if clip and any(getattr(optimizer, k, None) for k in ("clipnorm", "global_clipnorm",
                                                           "clipvalue")):
        raise ConfigError("--clip-grad-norm clips the averaged gradient: build the optimizer "
                          "without its own clipnorm, global_clipnorm or clipvalue")


def refuse_two_weight_decays(optimizer, weight_decay: float) -> None:
    """ConfigError when ``--weight-decay`` meets an optimizer with a decay of its own (applied
    twice otherwise); every rank builds the same optimizer, so every rank says it."""
    if weight_decay and getattr(optimizer, "weight_decay", None):
        raise ConfigError("--weight-decay is the core's (L2, as torch's SGD): build the "
                          "optimizer without its own weight_decay")


# The graph code of these helpers (Horovod's tape and allreduce among it) has no Python control
# flow on tensors, so AutoGraph need not rewrite it: rewriting it cost each TensorFlow worker
# about 3.5 s at its first step (measured 2026-12-06). The user's model is still converted.
@tf.autograph.experimental.do_not_convert
def averaged_gradients(tape: tf.GradientTape, target, variables, cfg: TrainConfig) -> list:
    """The gradients of ``target``, averaged over the workers by Horovod's tape."""
    return distributed_tape(tape, cfg).gradient(target, tf_variables(variables))


def tf_variables(variables) -> list:
    """The tf.Variables behind Keras 3 variables (Horovod's tape needs ``.ref()``)."""
    return [getattr(v, "value", v) if not isinstance(v, tf.Variable) else v for v in variables]


def allreduce_sum(values: np.ndarray) -> np.ndarray:
    """Sum a float64 vector over all ranks (a collective)."""
    t = tf.constant(np.asarray(values, dtype=np.float64))
    return hvd.allreduce(t, op=hvd.Sum, name="metric_sums").numpy()


def variables_of(model, optimizer) -> list:
    """Model weights then optimizer slots (the optimizer must be built)."""
    return list(model.weights) + list(optimizer.variables)


def _name(v) -> str:
    return getattr(v, "path", None) or v.name


def broadcast_state(model, optimizer) -> None:
    """Make every rank hold rank 0's weights and optimizer state (a collective)."""
    for i, v in enumerate(variables_of(model, optimizer)):
        v.assign(hvd.broadcast(tf.convert_to_tensor(v), root_rank=0, name=f"state_{i}"))


def shard_dataset(images: np.ndarray, labels: np.ndarray, indices: np.ndarray,
                  batch_size: int) -> tf.data.Dataset:
    """Batches of the given samples, in order (a rank's shard from ``Backend.train_indices``)."""
    ds = tf.data.Dataset.from_tensor_slices((images[indices], labels[indices]))
    return ds.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


@tf.autograph.experimental.do_not_convert
def counters(out, y, loss, layout: CounterLayout):
    """A batch's metric counters in ``layout`` order, as a float64 tensor (inside tf.function)."""
    y = tf.cast(y, tf.int32)
    n = tf.cast(tf.shape(y)[0], tf.float64)
    out = tf.cast(out, tf.float32)
    parts = [tf.reshape(tf.cast(loss, tf.float64) * n, [1]), tf.reshape(n, [1])]
    for k in layout.topk:
        hits = tf.math.in_top_k(y, out, min(k, out.shape[-1]))
        parts.append(tf.reshape(tf.reduce_sum(tf.cast(hits, tf.float64)), [1]))
    if layout.confusion_classes:
        c = layout.confusion_classes
        pred = tf.argmax(out, 1, output_type=tf.int32)
        parts.append(tf.cast(tf.math.bincount(y * c + pred, minlength=c * c, maxlength=c * c),
                             tf.float64))
    return tf.concat(parts, 0)


class _ScalarWriter:
    """TensorBoard scalars through ``tf.summary`` (no torch needed)."""

    def __init__(self, log_dir: str) -> None:
        self.writer = tf.summary.create_file_writer(log_dir)

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        with self.writer.as_default():
            tf.summary.scalar(tag, value, step=step)

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class TFBackend(Backend):
    """A Keras model, its optimizer, a loss and ArrayDatasets (inputs as the model takes them),
    for the core.

    The optimizer is built here. For the custom loop it is a plain Keras optimizer (Horovod's
    tape averages the gradients); for ``model.fit`` it is Horovod's Keras DistributedOptimizer.
    ``topk`` and ``num_classes`` are as for ``Backend``.
    """

    checkpoint_suffix = "npz"
    hvd = hvd

    def __init__(self, rt: Runtime, cfg: TrainConfig, model, optimizer, loss_fn, train, val,
                 topk: tuple[int, ...] = (1,), num_classes: int = 0,
                 val_batch_size: int = 256) -> None:
        super().__init__(rt, cfg, model, optimizer, loss_fn, len(train), len(val), topk,
                         num_classes, val_batch_size)
        self.train, self.val = train, val
        self.inputs, self.val_inputs = train.inputs, val.inputs
        self.policy = tf.keras.mixed_precision.global_policy().name
        if cfg.run.amp and self.policy == "float32":
            self.notices.append("--amp ignored: no GPU, training in fp32")
        if self.policy == "mixed_float16" and hasattr(optimizer, "scale_loss"):
            # The custom loop's Keras 3 optimizer scales the loss and skips steps whose
            # gradients overflow (model.fit wraps its own optimizer so).
            optimizer = self.optimizer = tf.keras.mixed_precision.LossScaleOptimizer(optimizer)
        if cfg.run.sync_bn and not tf_sync_bn.convert(model):  # before the step is traced
            raise ConfigError("--sync-bn: the model has no batch norm layer to synchronize")
        refuse_two_weight_decays(optimizer, cfg.optimizer.weight_decay)
        # model.fit's optimizer clips in the core's Keras optimizer (keras_fit.sgd) and notes
        # the norms there; the custom loop clips in its train step.
        core = getattr(getattr(optimizer, "inner_optimizer", optimizer), "grad_norms", None)
        self.grad_norms = core or GradNorms()
        if core is None:
            refuse_two_clips(optimizer, cfg.gradients.clip_grad_norm)
        check_optimizer_flags(cfg, type(getattr(optimizer, "inner_optimizer", optimizer)).__name__,
                              optimizer_momentum(optimizer), None)
        optimizer.build(model.trainable_variables)
        self._train_step = self._eval_step = None

    # --- the job and its collectives ------------------------------------------------------------
    def allreduce_sum(self, values: np.ndarray) -> np.ndarray:
        return allreduce_sum(values)

    def elastic_run(self, func):
        """``hvd.elastic.run``, with any failed Horovod op taken for a lost worker. Horovod's
        own wrapper knows only the Allreduce, Allgather and Broadcast ops by name, and returns
        quietly from any other TensorFlow UnknownError: a failed grouped allreduce (Keras 3's
        ``model.fit`` here) would end training as if it were done."""
        from horovod.common.exceptions import HorovodInternalError

        def guarded(state, *args, **kwargs):
            try:
                return func(state, *args, **kwargs)
            except tf.errors.UnknownError as e:
                if "Horovod" in (e.message or ""):
                    raise HorovodInternalError(e) from e
                raise

        return hvd.elastic.run(guarded)

    # --- random number generators ---------------------------------------------------------------
    def rng_state(self) -> dict:
        """Python's, numpy's and TensorFlow's global generator, as JSON values."""
        kind, keys, pos, has_gauss, gauss = np.random.get_state()
        return {"python": random.getstate(),
                "numpy": [kind, keys.tolist(), pos, has_gauss, gauss],
                "tf": tf.random.get_global_generator().state.numpy().tolist()}

    def set_rng_state(self, state: dict) -> None:
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
        kind, keys, pos, has_gauss, g = state["numpy"]
        np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, g))
        tf.random.get_global_generator().reset(np.asarray(state["tf"], dtype=np.int64))

    def seed(self, seed: int) -> None:
        seed_everything(seed)

    # --- model and optimizer state ---------------------------------------------------------------
    def variables(self) -> list:
        return variables_of(self.model, self.optimizer)

    def state(self) -> dict:
        return {"arrays": [np.array(v.numpy()) for v in self.variables()]}

    def snapshot(self) -> dict:
        return self.state()  # numpy copies already

    def host_copy(self, state: dict) -> dict:
        return state  # state()'s arrays are copies already

    def load_state(self, state: dict, source: str) -> None:
        variables, arrays = self.variables(), state["arrays"]
        if len(variables) != len(arrays):
            raise CheckpointError(f"{source!r} holds {len(arrays)} arrays for "
                                  f"{len(variables)} variables")
        for v, a in zip(variables, arrays, strict=True):
            v.assign(a)

    def signature(self) -> list[list]:
        return [[_name(v), list(v.shape)] for v in self.variables()]

    def broadcast_state(self) -> None:
        broadcast_state(self.model, self.optimizer)

    def weights_finite(self) -> bool:
        flags = [tf.reduce_all(tf.math.is_finite(v)) for v in self.model.trainable_variables]
        return bool(tf.reduce_all(tf.stack(flags))) if flags else True

    def write_checkpoint(self, f, record: dict) -> None:
        arrays = record["state"]["arrays"]
        header = {k: v for k, v in record.items() if k != "state"}
        header.update(format=CHECKPOINT_FORMAT, count=len(arrays))
        header = json.loads(json.dumps(header))  # the header as it will read back
        header[CHECKSUM_KEY] = content_digest({**header, "arrays": list(arrays)})
        buf = io.BytesIO()
        np.savez(buf, header=np.array(json.dumps(header)),
                 **{f"v{i}": a for i, a in enumerate(arrays)})
        f.write(buf.getvalue())

    def read_checkpoint(self, path: str) -> dict:
        with np.load(path, allow_pickle=False) as f:
            header = json.loads(str(f["header"]))
            arrays = [f[f"v{i}"] for i in range(header.get("count", 0))]
        if header.get("format") != CHECKPOINT_FORMAT:
            raise CheckpointError(f"{path!r} is not a horovod-recipes TensorFlow checkpoint")
        header = verified({**header, "arrays": arrays})
        header["state"] = {"arrays": header.pop("arrays")}
        return header

    # --- training and evaluation ----------------------------------------------------------------
    def train_batches(self, epoch: int, samples_done: int):
        indices = self.train_indices(self.cfg.run.seed, epoch, samples_done)
        return shard_dataset(self.inputs, self.train.labels, indices, self.samples_per_step)

    def set_lr(self, lr: float) -> None:
        self.optimizer.learning_rate.assign(lr)

    def zero_counters(self):
        return tf.zeros(self.train_layout.size, tf.float64)

    def read_counters(self, c) -> np.ndarray:
        return np.asarray(c.numpy(), dtype=np.float64)

    def train_step(self, batch):
        if self._train_step is None:
            self._train_step = self._make_train_step()
        return self._train_step(*batch)

    def _make_train_step(self):
        """A tf.function: one optimizer step over a batch of K micro-batches traced in one tape,
        so their gradients are summed locally and allreduced once (the K micro-batches'
        activations are held at once)."""
        model, optimizer, loss_fn, passes = self.model, self.optimizer, self.loss_fn, self.passes
        layout, cfg = self.train_layout, self.cfg
        decay, clip, norms = cfg.optimizer.weight_decay, cfg.gradients.clip_grad_norm, self.grad_norms

        @tf.function
        def step(x, y):
            n = tf.cast(tf.shape(y)[0], tf.float32)
            total = tf.constant(0.0)
            sums = tf.zeros(layout.size, tf.float64)
            with tf.GradientTape() as tape:
                for xs, ys in zip(tf.split(x, passes), tf.split(y, passes), strict=True):
                    out = tf.cast(model(xs, training=True), tf.float32)  # fp32 loss under --amp
                    loss = loss_fn(ys, out)
                    total += loss * tf.cast(tf.shape(ys)[0], tf.float32) / n
                    sums += counters(out, ys, loss, layout)
                scaled = optimizer.scale_loss(total) if hasattr(optimizer, "scale_loss") else total
            grads = averaged_gradients(tape, scaled, model.trainable_variables, cfg)  # distributed
            # what the loss was scaled by, so that the clip bound and the L2 term scale alike
            scale = optimizer.scale_loss(tf.constant(1.0)) if hasattr(optimizer, "scale_loss") \
                else 1.0
            if clip:  # the averaged gradient, before the L2 term (as torch's SGD applies it)
                grads = clipped(grads, clip, norms, scale)
            if decay:
                grads = with_weight_decay(grads, model.trainable_variables, decay, scale)
            optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
            return sums

        return step

    def evaluate(self) -> MetricSums:
        if self._eval_step is None:
            model, loss_fn, layout = self.model, self.loss_fn, self.val_layout

            @tf.function
            def eval_step(x, y):
                out = tf.cast(model(x, training=False), tf.float32)
                return counters(out, y, loss_fn(y, out), layout)

            self._eval_step = eval_step
        idx = self.val_indices()
        total = tf.zeros(self.val_layout.size, tf.float64)  # on the device, read once
        ds = tf.data.Dataset.from_tensor_slices((self.val_inputs[idx], self.val.labels[idx]))
        for x, y in ds.batch(self.val_batch_size):
            total += self._eval_step(x, y)
            beat()
        return MetricSums(self.val_layout, self.read_counters(total))

    def scalar_writer(self, log_dir: str):
        return _ScalarWriter(log_dir)

    def epoch_stats(self) -> dict:
        return self.grad_norms.read() if self.cfg.gradients.clip_grad_norm else {}
