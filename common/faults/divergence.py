"""Divergence owns when training counts as diverged: a non-finite loss, or one that exploded past its start.

Two rules, checked on global (all-rank) loss sums, so every rank reaches the same verdict at
the same point without talking: the loss is NaN or infinite; or it is more than ``factor``
times the run's reference loss, the mean loss of the run's first step (a fresh or a resumed
run: the model it starts from). A network whose ReLUs blow up can keep a finite loss for ever
(TensorFlow's stable cross-entropy does), so the second rule is what catches an LR that is far
too large there. ``--divergence-factor 0`` keeps only the first rule.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass
class DivergenceGuard:
    """The verdict on a window of training: None, or why it diverged."""

    factor: float = 1000.0

    def reason(self, loss: float, ref: float | None) -> str | None:
        """``ref``: the mean loss of the run's first step, over all ranks (None: not yet)."""
        if not math.isfinite(loss):
            return "the loss is not finite (NaN or inf)"
        if self.factor and ref is not None and math.isfinite(ref) and ref > 0 and (
                loss > self.factor * ref):
            return (f"the loss {loss:.4g} is more than {self.factor:g} times the run's first "
                    f"({ref:.4g}; see --divergence-factor)")
        return None
