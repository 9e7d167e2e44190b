"""TF backend owns the TensorFlow side of the core: Horovod setup, gradient averaging, variable broadcast,
checkpoints, sharded tf.data input and Keras callbacks that work on TF 2.21.

Framework-agnostic pieces (config, LR schedule, metric sums, checkpoint files, output) come from
the sibling modules, exactly as for PyTorch. Works with Keras 3 (the custom loop) and with
tf-keras (``TF_USE_LEGACY_KERAS=1``, for ``model.fit``): both expose ``model.weights`` and
``optimizer.variables``.

TensorFlow's C++ log noise is off unless you ask for it: this module sets
``TF_CPP_MIN_LOG_LEVEL=2`` before TensorFlow is imported, unless the variable is already set
(``TF_CPP_MIN_LOG_LEVEL=0`` shows everything).
"""

from __future__ import annotations

import io
import json
import os
import random

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import horovod.tensorflow as hvd  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from common.checkpoint import CheckpointError, CheckpointStore  # noqa: E402
from common.config import TrainConfig  # noqa: E402
from common.data import shard_indices  # noqa: E402
from common.failure import agree  # noqa: E402
from common.metrics import MetricSums  # noqa: E402
from common.runtime import Runtime, init_horovod, threads_per_worker  # noqa: E402

CHECKPOINT_FORMAT = "horovod-recipes/tf/1"


def init(cfg: TrainConfig, comm=None) -> Runtime:
    """Initialise Horovod, pin threads and GPU for this rank, seed every RNG from ``cfg.seed``."""
    rt = init_horovod(hvd, comm, cfg.mpi_groups)
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:  # one GPU per rank, as torch_backend.init picks it
        gpu = gpus[rt.local_rank % len(gpus)]
        tf.config.experimental.set_memory_growth(gpu, True)
        tf.config.set_visible_devices(gpu, "GPU")
    threads = threads_per_worker(rt.local_size, cfg.threads_per_worker)
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:  # already initialised (a second init in one process)
        pass
    seed_everything(cfg.seed)
    return rt


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    tf.random.set_seed(seed)


def compression(cfg: TrainConfig):
    return hvd.Compression.fp16 if cfg.fp16_allreduce else hvd.Compression.none


def distributed_tape(tape: tf.GradientTape, cfg: TrainConfig) -> tf.GradientTape:
    """Wrap a tape in Horovod's DistributedGradientTape with the core's gradient options."""
    return hvd.DistributedGradientTape(
        tape, compression=compression(cfg), op=hvd.Adasum if cfg.use_adasum else hvd.Average,
        gradient_predivide_factor=cfg.gradient_predivide_factor)


def tf_variables(variables) -> list:
    """The tf.Variables behind Keras 3 variables (Horovod's tape needs ``.ref()``)."""
    return [getattr(v, "value", v) if not isinstance(v, tf.Variable) else v for v in variables]


def allreduce_sum(values: np.ndarray) -> np.ndarray:
    """Sum a float64 vector over all ranks (a collective)."""
    t = tf.constant(np.asarray(values, dtype=np.float64))
    return hvd.allreduce(t, op=hvd.Sum, name="metric_sums").numpy()


def set_lr(optimizer, lr: float) -> None:
    optimizer.learning_rate.assign(lr)


def variables_of(model, optimizer) -> list:
    """Model weights then optimizer slots (the optimizer must be built)."""
    return list(model.weights) + list(optimizer.variables)


def _name(v) -> str:
    return getattr(v, "path", None) or v.name


def signature(variables) -> list[list]:
    return [[_name(v), list(v.shape)] for v in variables]


def broadcast_state(model, optimizer) -> None:
    """Make every rank hold rank 0's weights and optimizer state (a collective)."""
    # Keras 3 variables are not tf.Variables, which hvd.broadcast_variables assigns inside a
    # tf.function; broadcast each value eagerly and assign it instead.
    for i, v in enumerate(variables_of(model, optimizer)):
        v.assign(hvd.broadcast(tf.convert_to_tensor(v), root_rank=0, name=f"state_{i}"))


def shard_dataset(images: np.ndarray, labels: np.ndarray, rt: Runtime, seed: int, epoch: int,
                  batch_size: int, skip_batches: int = 0,
                  samples_per_step: int | None = None) -> tf.data.Dataset:
    """This rank's batches of an epoch, in the same order the PyTorch recipes use.

    All ranks draw one permutation from (seed, epoch) and rank r takes every size-th sample
    (``common.data.shard_indices``), so shards are disjoint, reshuffled every epoch, equal in
    length (the tail is dropped) and identical to the PyTorch recipes' for the same flags. The
    order is drawn before sharding, not per shard, so that it matches PyTorch's exactly.
    """
    idx = shard_indices(len(labels), rt.rank, rt.size, seed, epoch)[skip_batches * batch_size:]
    if samples_per_step:  # only whole steps (batches of passes), as the other recipes take
        idx = idx[: len(idx) - len(idx) % samples_per_step]
    ds = tf.data.Dataset.from_tensor_slices((images[idx], labels[idx]))
    return ds.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def eval_dataset(images: np.ndarray, labels: np.ndarray, rt: Runtime,
                 batch_size: int = 256) -> tf.data.Dataset:
    """This rank's validation shard, every sample once."""
    idx = shard_indices(len(labels), rt.rank, rt.size, 0, 0, shuffle=False, drop_tail=False)
    return tf.data.Dataset.from_tensor_slices((images[idx], labels[idx])).batch(batch_size)


def evaluate(model, images: np.ndarray, labels: np.ndarray, rt: Runtime) -> MetricSums:
    """This rank's validation sums (reduce with ``global_sums``)."""
    loss_fn = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    sums = MetricSums()
    for x, y in eval_dataset(images, labels, rt):
        out = model(x, training=False)
        correct = tf.reduce_sum(tf.cast(tf.argmax(out, 1) == tf.cast(y, tf.int64), tf.float64))
        sums.add(float(loss_fn(y, out)), float(correct), int(y.shape[0]))
    return sums


class Checkpointer:
    """Rank-0 checkpoints of Keras weights and optimizer state as .npz, restored by broadcast.

    Files hold only arrays and a JSON header and are read with ``allow_pickle=False``. Every
    rank calls :meth:`restore` once (after the optimizer is built) and :meth:`save` at the same
    points; both are collectives.
    """

    def __init__(self, rt: Runtime, cfg: TrainConfig, recipe: str, model, optimizer,
                 steps_per_epoch: int = 1) -> None:
        self.rt, self.recipe, self.model, self.optimizer = rt, recipe, model, optimizer
        self.steps_per_epoch = steps_per_epoch
        self.seed = cfg.seed
        self.store = (CheckpointStore(cfg.checkpoint_dir, cfg.keep_checkpoints, suffix="npz")
                      if cfg.checkpoint_dir else None)

    def _load(self, path: str) -> dict:
        with np.load(path, allow_pickle=False) as f:
            header = json.loads(str(f["header"]))
            arrays = [f[f"v{i}"] for i in range(header.get("count", 0))]
        if header.get("format") != CHECKPOINT_FORMAT:
            raise CheckpointError(f"{path!r} is not a horovod-recipes TensorFlow checkpoint")
        if header.get("recipe") != self.recipe:
            raise CheckpointError(f"{path!r} was saved by recipe {header.get('recipe')!r}, not "
                                  f"{self.recipe!r}; use another --checkpoint-dir")
        ours = signature(variables_of(self.model, self.optimizer))
        if header["signature"] != ours:
            raise CheckpointError(f"{path!r} holds a different model or optimizer; "
                                  "use another --checkpoint-dir")
        return {"header": header, "arrays": arrays}

    def restore(self):
        """Resume from the newest valid checkpoint; returns (epoch, step, path, notices)."""
        found, error, notices = None, "", []
        if self.rt.is_root and self.store is not None:
            try:
                found = self.store.newest_valid(self._load)
                if found:
                    for v, a in zip(variables_of(self.model, self.optimizer),
                                    found[1]["arrays"], strict=True):
                        v.assign(a)
                    if found[2]:
                        notices.append(f"skipped unreadable checkpoints: {', '.join(found[2])}")
            except CheckpointError as e:
                error = str(e)
        agree(not error, error, hvd.broadcast_object)
        meta = None
        if found:
            h = found[1]["header"]
            meta = {k: h[k] for k in ("epoch", "step", "world_size", "steps_per_epoch")}
            meta["path"] = found[0].path
        meta = hvd.broadcast_object(meta, root_rank=0, name="ckpt_meta")
        broadcast_state(self.model, self.optimizer)
        if meta is None:
            return 0, 0, None, notices
        step = meta["step"]
        if meta["world_size"] != self.rt.size or meta["steps_per_epoch"] != self.steps_per_epoch:
            step = meta["epoch"] * self.steps_per_epoch
            notices.append(f"checkpoint was written by {meta['world_size']} worker(s); this run "
                           f"has {self.rt.size}: continuing from the start of epoch "
                           f"{meta['epoch'] + 1}")
        return meta["epoch"], step, meta["path"], notices

    def save(self, epoch: int, step: int) -> str | None:
        """Write a checkpoint from rank 0 (a collective); returns its path."""
        if self.store is None:
            return None
        path, error = None, ""
        if self.rt.is_root:
            variables = variables_of(self.model, self.optimizer)
            header = {"format": CHECKPOINT_FORMAT, "recipe": self.recipe, "epoch": epoch,
                      "step": step, "world_size": self.rt.size,
                      "steps_per_epoch": self.steps_per_epoch, "count": len(variables),
                      "signature": signature(variables)}
            arrays = {f"v{i}": v.numpy() for i, v in enumerate(variables)}

            def write(f):
                buf = io.BytesIO()
                np.savez(buf, header=np.array(json.dumps(header)), **arrays)
                f.write(buf.getvalue())

            try:
                path = self.store.save(epoch, step, write)
            except CheckpointError as e:
                error = str(e)
        agree(not error, error, hvd.broadcast_object)
        return hvd.broadcast_object(path, root_rank=0, name="ckpt_path")
