"""--clip-grad-norm clips the averaged gradient, once per optimizer step, in every training path: 2
workers x B reach the weights of 1 worker x 2B with the bound hit on most steps (a clip of each
worker's own gradient before the allreduce would not)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.support import (
    BIN,
    HELPERS,
    LAUNCHERS,
    MNIST,
    epoch_records,
    final_checkpoint,
    horovodrun,
    max_abs_diff,
    max_array_diff,
    run_job,
    run_recipe,
)

CLIP = 0.05  # the MNIST CNN's first gradients have a norm of about 0.1 to 1: it bites
EQUIV = ["--momentum", "0", "--lr-scaling", "none", "--warmup-epochs", "0", "--lr-decay", "none",
         "--base-lr", "0.1", "--max-steps", "6", "--epochs", "1", "--clip-grad-norm", str(CLIP)]


def test_pytorch_clips_the_averaged_gradient_plain_and_accumulated(tmp_path):
    one, _ = run_recipe(horovodrun, 1, MNIST, tmp_path / "one", *EQUIV, "--batch-size", "16")
    two, _ = run_recipe(horovodrun, 2, MNIST, tmp_path / "two", *EQUIV, "--batch-size", "8")
    acc, _ = run_recipe(horovodrun, 2, MNIST, tmp_path / "acc", *EQUIV, "--batch-size", "4",
                        "--batches-per-allreduce", "2")
    w1, w2, wa = (final_checkpoint(out) for out in (one, two, acc))
    assert w1["step"] == w2["step"] == wa["step"] == 6
    assert max_abs_diff(w2["model"], w1["model"]) < 1e-5
    assert max_abs_diff(wa["model"], w1["model"]) < 1e-5
    for out in (one, two, acc):  # the norm before clipping, the same on every rank: it bit
        [record] = epoch_records(out / "metrics.jsonl")
        assert record["clipped_share"] >= 0.5 and record["grad_norm_max"] > CLIP, record
        assert record["grad_norm_mean"] <= record["grad_norm_max"]
    r1, r2 = (epoch_records(out / "metrics.jsonl")[0] for out in (one, two))
    assert r2["grad_norm_mean"] == pytest.approx(r1["grad_norm_mean"], rel=1e-4)


def adasum(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Adasum of two workers' gradients of one tensor (Horovod combines each tensor so)."""
    dot = float((a * b).sum())
    return (1 - dot / (2 * float((a * a).sum()))) * a + (1 - dot / (2 * float((b * b).sum()))) * b


def torch_replay(run: dict, clip: float | None, per_worker: bool = False,
                 combine=None) -> list[np.ndarray]:
    """The TensorFlow helper's three steps on 2 workers, replayed with torch on the 8 samples:
    the mean gradient clipped (``per_worker``: each half's gradient clipped, then averaged;
    ``combine(a, b)``: each tensor's two halves combined so instead of averaged)."""
    x, y = torch.tensor(run["x"]), torch.tensor(run["y"])
    w = torch.tensor(run["start"][0]).T.contiguous().requires_grad_()
    b = torch.tensor(run["start"][1]).requires_grad_()
    opt = torch.optim.SGD([w, b], lr=0.1)
    for _ in range(3):
        grads = []
        halves = per_worker or combine
        for part in ([slice(0, None, 2), slice(1, None, 2)] if halves else [slice(None)]):
            opt.zero_grad()
            F.cross_entropy(x[part] @ w.T + b[None], y[part]).backward()
            torch.nn.utils.clip_grad_norm_([w, b], clip) if per_worker else None
            grads.append([w.grad.clone(), b.grad.clone()])
        if combine:
            w.grad, b.grad = (combine(grads[0][i], grads[1][i]) for i in range(2))
        else:
            w.grad, b.grad = (sum(g[i] for g in grads) / len(grads) for i in range(2))
        if clip and not per_worker:
            torch.nn.utils.clip_grad_norm_([w, b], clip)
        opt.step()
    return [w.detach().T.numpy(), b.detach().numpy()]


@pytest.mark.parametrize("path", ["custom", "keras", "tf-keras"])
def test_tensorflow_clips_the_averaged_gradient(tmp_path, path):
    """The TF custom loop, model.fit on Keras 3 and on tf-keras, 2 workers x 4 samples."""
    proc = run_job([*LAUNCHERS["mpi"], BIN / "python", HELPERS / "tf_weight_decay.py", path,
                    "0", "0", "0.2"], tmp_path, check=True)
    run = json.loads(proc.stdout.strip().splitlines()[-1])
    end = [np.array(a) for a in run["end"]]
    assert max_array_diff(end, torch_replay(run, 0.2)) < 1e-5
    assert max_array_diff(end, torch_replay(run, 0.2, per_worker=True)) > 1e-4  # it can fail
    assert run["norms"]["clipped_share"] == 1.0 and run["norms"]["grad_norm_max"] > 0.2


def test_keras3_fit_compresses_and_adasums_as_horovod(tmp_path):
    """Keras 3 model.fit's --fp16-allreduce (the average within fp16's rounding, not exactly)
    and --use-adasum under MPI (each tensor's two gradients Adasum-combined, not averaged)."""
    runs = {}
    for option in ("fp16", "adasum"):
        proc = run_job([*LAUNCHERS["mpi"], BIN / "python", HELPERS / "tf_weight_decay.py", "keras",
                        "0", "0", "0", option], tmp_path, check=True)
        runs[option] = json.loads(proc.stdout.strip().splitlines()[-1])
    fp16 = [np.array(a) for a in runs["fp16"]["end"]]
    exact = torch_replay(runs["fp16"], None)
    assert 0 < max_array_diff(fp16, exact) < 1e-3
    summed = [np.array(a) for a in runs["adasum"]["end"]]
    assert max_array_diff(summed, torch_replay(runs["adasum"], None, combine=adasum)) < 1e-5
    assert max_array_diff(summed, torch_replay(runs["adasum"], None)) > 1e-4  # not an average
