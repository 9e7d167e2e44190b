"""Schedule owns the learning rate: scaling by workers, gradual warmup, and decay, for every framework.

The rule (Goyal et al., 2017, "Accurate, Large Minibatch SGD"): ``--base-lr`` is the LR of one
worker with one backward pass per step. With N workers and k backward passes per allreduce the
global batch is N*k times larger, so the target LR is ``base_lr * N * k`` (``linear``, default)
or ``base_lr * sqrt(N * k)`` (``sqrt``), or ``base_lr`` (``none``). Warmup raises the LR
linearly, every step, from ``base_lr`` to the target over the first ``warmup_epochs``; then the
decay applies (``step``: multiply by ``decay_factor`` at each of ``decay_epochs``; ``cosine``:
from the target down to 0 at the end of training).

Adasum does not average gradients: it combines them so that the update already has the size of
one worker's step, so the LR is *not* scaled by the world size. When Horovod runs Adasum
hierarchically on GPUs (NCCL inside a node, Adasum across nodes) the gradients within a node are
summed, so the LR is scaled by the local size only. ``--batches-per-allreduce`` still scales, as
those passes are summed locally before Adasum.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


def lr_multiplier(
    rule: str, world_size: int, batches_per_allreduce: int = 1,
    use_adasum: bool = False, adasum_local_size: int = 1,
) -> float:
    """How many times larger than ``base_lr`` the LR is after warmup."""
    if use_adasum:
        # See the module docstring: only locally summed gradients grow the step.
        workers = adasum_local_size
    else:
        workers = world_size
    factor = workers * batches_per_allreduce
    if rule == "linear":
        return float(factor)
    if rule == "sqrt":
        return math.sqrt(factor)
    if rule == "none":
        return 1.0
    raise ValueError(f"unknown LR scaling rule {rule!r}")


@dataclass(frozen=True)
class LRSchedule:
    """The LR at any optimizer step; the one schedule every recipe and framework uses."""

    base_lr: float
    multiplier: float
    steps_per_epoch: int
    epochs: int
    warmup_epochs: float = 0.0
    decay: str = "none"
    decay_epochs: tuple[int, ...] = ()
    decay_factor: float = 0.1

    def __post_init__(self):
        if self.steps_per_epoch < 1:
            raise ValueError("steps_per_epoch must be at least 1")
        if self.decay not in ("none", "step", "cosine"):
            raise ValueError(f"unknown decay {self.decay!r}")

    @classmethod
    def from_config(cls, cfg, world_size: int, steps_per_epoch: int,
                    adasum_local_size: int = 1) -> LRSchedule:
        """The schedule of a ``TrainConfig`` on ``world_size`` workers."""
        s, g = cfg.schedule, cfg.gradients
        return cls(
            base_lr=s.base_lr,
            multiplier=lr_multiplier(s.lr_scaling, world_size, g.batches_per_allreduce,
                                     g.use_adasum, adasum_local_size),
            steps_per_epoch=steps_per_epoch,
            epochs=cfg.run.epochs,
            warmup_epochs=s.warmup_epochs,
            decay=s.lr_decay,
            decay_epochs=tuple(s.decay_epochs),
            decay_factor=s.decay_factor,
        )

    @property
    def target_lr(self) -> float:
        return self.base_lr * self.multiplier

    def __call__(self, step: int) -> float:
        """LR for optimizer step ``step`` (0-based, counted over the whole run)."""
        if step < 0:
            raise ValueError("step must be non-negative")
        epoch = step / self.steps_per_epoch  # fractional epoch at the start of this step
        warmup_steps = self.warmup_epochs * self.steps_per_epoch
        if step < warmup_steps:
            # Linear in steps: base_lr at step 0, reaching the target at the end of warmup.
            return self.base_lr + (self.target_lr - self.base_lr) * (step / warmup_steps)
        lr = self.target_lr
        if self.decay == "step":
            passed = sum(1 for e in self.decay_epochs if epoch >= e)
            lr *= self.decay_factor**passed
        elif self.decay == "cosine":
            total = self.epochs * self.steps_per_epoch
            span = max(total - warmup_steps, 1)
            progress = min(max((step - warmup_steps) / span, 0.0), 1.0)
            lr *= 0.5 * (1.0 + math.cos(math.pi * progress))
        return lr
