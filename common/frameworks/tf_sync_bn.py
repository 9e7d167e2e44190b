"""TF sync BN owns TensorFlow's synchronized batch norm (``--sync-bn``): Keras 3 batch norm, global batch.

Keras's own ``BatchNormalization(synchronized=True)`` synchronises over ``tf.distribute``
replicas only, not over Horovod's workers. :func:`convert` turns each Keras 3
``BatchNormalization`` layer of a model into :class:`SyncBatchNormalization` in place (the same
layer object, weights and moving statistics; only its batch moments change): in training its
mean and variance are those of the global batch, every worker's samples, from two
differentiable Horovod allreduces per layer in float64 (each channel's count and sum, then its
squares about the global mean). Their backward is the allreduce of the gradients, which is what
the gradient of the global batch's loss needs; the moving statistics follow the global batch,
the same on every worker.
"""

from __future__ import annotations

import horovod.tensorflow as hvd
import tensorflow as tf

from common.config.flags import ConfigError

keras = tf.keras


class SyncBatchNormalization(keras.layers.BatchNormalization):
    """Keras 3 batch norm whose training moments are the global batch's (Horovod)."""

    def _moments(self, inputs, mask):
        if mask is not None:
            raise ConfigError("--sync-bn: batch norm over masked inputs is not synchronized")
        x = tf.cast(inputs, tf.float64)
        axes = list(self._reduction_axes)
        total = tf.reduce_sum(x, axis=axes, keepdims=True)
        count = tf.cast(tf.reduce_prod(tf.gather(tf.shape(x), axes)), tf.float64)
        both = hvd.allreduce(tf.concat([tf.reshape(total, [-1]), tf.reshape(count, [1])], 0),
                             op=hvd.Sum)  # distributed: every worker's count and sums
        n = both[-1]
        mean = tf.reshape(both[:-1], tf.shape(total)) / n
        squares = tf.reduce_sum(tf.square(x - mean), axis=axes, keepdims=True)
        variance = hvd.allreduce(squares, op=hvd.Sum) / n  # distributed
        return (tf.cast(tf.squeeze(mean), inputs.dtype),
                tf.cast(tf.squeeze(variance), inputs.dtype))


def convert(model) -> int:
    """Make every Keras 3 BatchNormalization layer of ``model`` (nested models too) a
    :class:`SyncBatchNormalization`; returns how many there were."""
    if tf.keras.__name__.startswith("tf_keras"):
        raise ConfigError("--sync-bn needs Keras 3 (tf-keras's batch norm synchronises over "
                          "tf.distribute only): unset TF_USE_LEGACY_KERAS")
    found = [layer for layer in model._flatten_layers(include_self=False, recursive=True)
             if isinstance(layer, keras.layers.BatchNormalization)]
    for layer in found:
        layer.__class__ = SyncBatchNormalization
    return len(found)
