"""Torch sync BN owns PyTorch's synchronized batch norm (``--sync-bn``): Horovod's on GPUs, the same on CPUs.

With small per-worker batches, each worker's batch statistics differ from those of the global
batch, and so does the training. ``--sync-bn`` makes every batch norm layer normalise with the
mean and variance of the whole global batch (every worker's samples) and keep running statistics
of it, so that N workers x B train as one worker with N x B does.

:func:`convert` swaps each ``BatchNorm1d/2d/3d`` of a model for :class:`SyncBatchNorm` in place,
keeping its parameters and buffers (the optimizer built over them stays valid). On CUDA tensors
the layer is Horovod's ``hvd.SyncBatchNorm`` (PyTorch's fused CUDA kernels); those kernels do
not exist for CPU tensors, where Horovod's layer refuses to run, so on CPU the layer sums each
channel's count and sum, then its squares about the global mean, over every worker with
differentiable ``hvd.allreduce`` calls (their backward is the allreduce of the gradients, which
is what the gradient of the global batch's loss needs).
"""

from __future__ import annotations

import horovod.torch as hvd
import torch
from torch import nn

from common.config.flags import ConfigError


class SyncBatchNorm(hvd.SyncBatchNorm):
    """Horovod's synchronized batch norm, also on CPU tensors."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if input.is_cuda:
            return super().forward(input)
        if self.training and hvd.size() > 1:
            self._check_input_dim(input)
            return self._synchronized(input)
        return self._local(input)

    def _factor(self) -> float:
        """The running statistics' update factor, as ``torch.nn.BatchNorm`` computes it."""
        if self.training and self.track_running_stats:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # a cumulative moving average
                return 1.0 / float(self.num_batches_tracked)
        return self.momentum or 0.0

    def _local(self, input: torch.Tensor) -> torch.Tensor:
        factor = self._factor()
        return nn.functional.batch_norm(
            input, self.running_mean, self.running_var, self.weight, self.bias,
            self.training or not self.track_running_stats, factor, self.eps)

    def _synchronized(self, input: torch.Tensor) -> torch.Tensor:
        """The global batch's statistics in two passes (its mean, then the squares about it),
        summed over the workers in float64, as exact as one worker's own layer is."""
        factor = self._factor()
        dims = [d for d in range(input.dim()) if d != 1]
        shape = [1, -1] + [1] * (input.dim() - 2)
        x = input.double()
        count = torch.tensor([x.numel() / x.shape[1]], dtype=torch.float64)
        sums = hvd.allreduce(torch.cat([x.sum(dims), count]), op=hvd.Sum)  # differentiable
        n = sums[-1]
        mean = sums[:-1] / n
        centred = x - mean.view(shape)
        var = hvd.allreduce((centred * centred).sum(dims), op=hvd.Sum) / n  # biased, as used
        out = centred * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            with torch.no_grad():
                unbiased = var * (n / torch.clamp(n - 1, min=1))
                self.running_mean.mul_(1 - factor).add_(mean.to(self.running_mean.dtype),
                                                        alpha=factor)
                self.running_var.mul_(1 - factor).add_(unbiased.to(self.running_var.dtype),
                                                       alpha=factor)
        return out.to(input.dtype)


def convert(model: nn.Module) -> int:
    """Swap every batch norm layer of ``model`` for :class:`SyncBatchNorm` in place, keeping its
    parameters and buffers; returns how many. ConfigError if it has none."""
    swapped = 0
    for parent in model.modules():
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.modules.batchnorm._BatchNorm) and not isinstance(
                    child, SyncBatchNorm):
                setattr(parent, name, _synced(child))
                swapped += 1
    if not swapped:
        raise ConfigError("--sync-bn: the model has no batch norm layer to synchronize")
    return swapped


def _synced(bn: nn.modules.batchnorm._BatchNorm) -> SyncBatchNorm:
    sync = SyncBatchNorm(bn.num_features, bn.eps, bn.momentum, bn.affine,
                         bn.track_running_stats)
    # The same parameter and buffer objects: the optimizer and the checkpoints see no change.
    if bn.affine:
        sync.weight, sync.bias = bn.weight, bn.bias
    if bn.track_running_stats:
        sync.running_mean, sync.running_var = bn.running_mean, bn.running_var
        sync.num_batches_tracked = bn.num_batches_tracked
    sync.train(bn.training)
    return sync.to(bn.weight.device if bn.affine else "cpu")
