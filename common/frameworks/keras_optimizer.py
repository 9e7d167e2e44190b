"""Keras optimizer owns gradient averaging in ``model.fit``: the core's own on Keras 3, Horovod's on tf-keras.

:func:`distributed_optimizer` wraps the optimizer a recipe gives ``model.compile`` so that every
step applies the gradient averaged over the workers, with the core's gradient options
(``--fp16-allreduce``, ``--batches-per-allreduce``, ``--use-adasum``,
``--gradient-predivide-factor``, ``--clip-grad-norm``, ``--weight-decay``), on either Keras:

- **Keras 3** (TensorFlow 2.16 and later by default): Horovod 0.28.1's Keras integration does
  not work with it (Keras 3 variables lack ``.ref()``; horovod/horovod issue 4290), so the core
  subclasses the user's optimizer: its ``apply`` sums ``--batches-per-allreduce`` passes'
  gradients locally, and on the last one averages them with one grouped Horovod allreduce,
  clips and adds the L2 term, then applies them as the optimizer would.
- **tf-keras** (``TF_USE_LEGACY_KERAS=1`` set before TensorFlow is imported: the one switch, for
  Keras 2 code): Horovod's own Keras ``DistributedOptimizer``, with the core's clip and L2 term
  in a subclass of the optimizer it wraps.

Both note the norm before clipping in ``grad_norms`` (``tf_backend.GradNorms``) and carry
``_allreduce``, by which ``common.loop.keras_fit`` knows a distributed optimizer.
"""

from __future__ import annotations

from common.config.core import TrainConfig
from common.frameworks.tf_backend import (
    GradNorms,
    clipped,
    compression,
    hvd,
    refuse_two_clips,
    refuse_two_weight_decays,
    tf,
    with_weight_decay,
)

KERAS_3 = not tf.keras.__name__.startswith("tf_keras")  # TF_USE_LEGACY_KERAS=1 gives tf_keras


def distributed_optimizer(optimizer, cfg: TrainConfig):
    """The optimizer, averaging its gradients over the workers with the core's gradient options
    (accumulated passes are averaged, as in the other recipes); ``--clip-grad-norm`` clips and
    ``--weight-decay`` adds to the averaged gradient. What ``model.compile(optimizer=...)`` takes."""
    refuse_two_weight_decays(optimizer, cfg.optimizer.weight_decay)
    refuse_two_clips(optimizer, cfg.gradients.clip_grad_norm)
    if KERAS_3:
        return _keras3_distributed(optimizer, cfg)
    return _tf_keras_distributed(optimizer, cfg)


def allreduce_gradients(grads: list, cfg: TrainConfig) -> list:
    """The gradients averaged over the workers in one grouped allreduce (``--use-adasum``:
    Adasum-combined, tensor by tensor), with ``--fp16-allreduce`` and
    ``--gradient-predivide-factor`` as Horovod's own optimizers apply them; skipped while the
    job has one worker (elastic: decided at run time)."""
    g = cfg.gradients
    op = hvd.Adasum if g.use_adasum else hvd.Average
    factor = g.gradient_predivide_factor if op == hvd.Average else 1.0
    dense = [tf.convert_to_tensor(x) for x in grads]

    def reduced():
        if g.use_adasum:  # one by one: Horovod 0.28.1's grouped allreduce fails with Adasum
            return [hvd.allreduce(x, compression=compression(cfg), op=op, name=f"core_grad_{i}")
                    for i, x in enumerate(dense)]
        return hvd.grouped_allreduce(dense, compression=compression(cfg), op=op,
                                     prescale_factor=1.0 / factor, postscale_factor=factor,
                                     name="core_gradients")

    return tf.cond(hvd.size_op() > 1, reduced, lambda: dense)


def _keras3_distributed(optimizer, cfg: TrainConfig):
    """A Keras 3 optimizer of the user's class and settings whose ``apply`` averages first."""
    base = type(optimizer)
    g = cfg.gradients
    passes, clip, decay = g.batches_per_allreduce, g.clip_grad_norm, cfg.optimizer.weight_decay
    norms = GradNorms()
    # The local sums of the passes of a step: kept out of the optimizer's own variables (not
    # in its checkpointed state: a checkpoint is written after a whole step).
    local: dict = {}

    def build(self, variables):
        base.build(self, variables)
        if passes > 1 and not local:
            with tf.init_scope():
                local["sums"] = [tf.Variable(tf.zeros(v.shape, v.dtype), trainable=False)
                                 for v in variables]
                local["count"] = tf.Variable(0, dtype=tf.int64, trainable=False)

    def _allreduce(self, grads, variables):
        grads = allreduce_gradients(grads, cfg)  # distributed: one grouped allreduce
        scale = self.loss_scale_factor or 1.0  # what the gradients still carry
        if clip:
            grads = clipped(grads, clip, norms, scale)
        grads = with_weight_decay(grads, variables, decay, scale)
        base.apply(self, grads, variables)

    def apply(self, grads, trainable_variables=None):
        variables = list(trainable_variables if trainable_variables is not None
                         else self._trainable_variables)
        if passes == 1:  # weights without a gradient (the same on every worker) are left out
            kept = [(x, v) for x, v in zip(grads, variables, strict=True) if x is not None]
            return _allreduce(self, [x for x, _ in kept], [v for _, v in kept]) if kept else None
        sums, count = local["sums"], local["count"]
        for total, grad in zip(sums, grads, strict=True):
            if grad is not None:
                total.assign_add(tf.cast(tf.convert_to_tensor(grad), total.dtype))
        count.assign_add(1)

        def step():
            _allreduce(self, [total / passes for total in sums], variables)
            for total in sums:
                total.assign(tf.zeros_like(total))
            return tf.constant(True)

        # every worker counts the same passes, so all take the same branch to the allreduce
        tf.cond(count % passes == 0, step, lambda: tf.constant(False))

    cls = type(base.__name__, (base,), {"build": build, "apply": apply, "_allreduce": _allreduce,
                                        "grad_norms": norms})
    return cls.from_config(optimizer.get_config())


def _tf_keras_distributed(optimizer, cfg: TrainConfig):
    """Horovod's Keras DistributedOptimizer around a subclass of the optimizer that clips and
    adds the L2 term (Horovod calls it once per step with the averaged gradients)."""
    import horovod.tensorflow.keras as hvd_keras

    g = cfg.gradients
    if cfg.optimizer.weight_decay or g.clip_grad_norm:
        optimizer = _with_core_gradients(optimizer, cfg.optimizer.weight_decay, g.clip_grad_norm)
    return hvd_keras.DistributedOptimizer(
        optimizer, compression=compression(cfg), backward_passes_per_step=g.batches_per_allreduce,
        average_aggregated_gradients=True,
        op=hvd_keras.Adasum if g.use_adasum else hvd_keras.Average,
        gradient_predivide_factor=g.gradient_predivide_factor)


def _with_core_gradients(optimizer, weight_decay: float, clip: float | None):
    """A tf-keras optimizer, as a subclass that clips the gradients it applies to
    ``--clip-grad-norm`` and adds the L2 term to them; its ``grad_norms`` note each step's norm
    before clipping."""
    base = type(optimizer)
    norms = GradNorms()

    def apply_gradients(self, grads_and_vars, *args, **kwargs):
        grads, variables = zip(*grads_and_vars, strict=True)
        if clip:
            grads = clipped(grads, clip, norms)
        grads = with_weight_decay(grads, variables, weight_decay)
        return base.apply_gradients(self, list(zip(grads, variables, strict=True)), *args, **kwargs)

    cls = type(base.__name__, (base,), {"apply_gradients": apply_gradients, "grad_norms": norms})
    return cls.from_config(optimizer.get_config())
