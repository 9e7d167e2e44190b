"""--weight-decay means one thing in every recipe: coupled L2, as torch's SGD applies it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.support import HELPERS, max_array_diff, python


def torch_sgd(run: dict, momentum: float, weight_decay: float) -> list[np.ndarray]:
    """The helper's three steps replayed with torch.optim.SGD (Keras's kernel is torch's
    weight transposed)."""
    x, y = torch.tensor(run["x"]), torch.tensor(run["y"])
    w = torch.tensor(run["start"][0]).T.contiguous().requires_grad_()
    b = torch.tensor(run["start"][1]).requires_grad_()
    opt = torch.optim.SGD([w, b], lr=0.1, momentum=momentum, weight_decay=weight_decay)
    for _ in range(3):
        opt.zero_grad()
        F.cross_entropy(x @ w.T + b, y).backward()
        opt.step()
    return [w.detach().T.numpy(), b.detach().numpy()]


@pytest.mark.parametrize("path", ["custom", "keras"])
def test_tensorflow_decays_weights_as_torch_sgd_does(tmp_path, path):
    """The TF custom loop and Keras's model.fit (keras_mnist.py once ignored the flag)."""
    proc = python([HELPERS / "tf_weight_decay.py", path, "0.9", "0.1"], cwd=tmp_path)
    run = json.loads(proc.stdout.splitlines()[-1])
    end = [np.array(a) for a in run["end"]]
    coupled = torch_sgd(run, 0.9, 0.1)
    assert max_array_diff(end, coupled) < 1e-5
    # the check can fail: without the decay, the weights are elsewhere
    plain = torch_sgd(run, 0.9, 0.0)
    assert max_array_diff(end, plain) > 1e-3
