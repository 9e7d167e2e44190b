"""GPU tests: Horovod collectives on CUDA tensors through NCCL. Skipped without a CUDA GPU (as in CI)."""

from __future__ import annotations

import json

import pytest
import torch

from tests.support import (
    HELPERS,
    horovodrun,
)

pytestmark = [pytest.mark.gpu, pytest.mark.multiprocess,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def test_collectives_and_optimizer_on_gpu(tmp_path):
    import horovod.torch as hvd

    if not hvd.nccl_built():
        pytest.skip("Horovod built without NCCL (SETUP_FLAVOR=gpu builds it)")
    np_ = torch.cuda.device_count()  # NCCL allows one rank per GPU
    out = tmp_path / "report.json"
    horovodrun(np_, [HELPERS / "gpu_collectives_check.py", out], cwd=tmp_path)
    report = json.loads(out.read_text())
    assert report["nccl_built"] and report["size"] == np_
    tolerance = {"torch.float32": 1e-7, "torch.float64": 1e-15, "torch.float16": 1e-3}
    assert report["allreduce_rel_error"].keys() == tolerance.keys()
    for dtype, err in report["allreduce_rel_error"].items():
        assert not isinstance(err, str) and err <= tolerance[dtype], (dtype, err)
    assert report["broadcast_ok"] and report["grouped_ok"]
    # One worker's DistributedOptimizer step is plain SGD's step.
    assert report["optimizer_step_max_diff"] < 1e-6
