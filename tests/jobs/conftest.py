"""Fixtures shared by the job tests: reference runs that several test files compare against.

Each is session-scoped: one real job, read by every test that needs it.
"""

from __future__ import annotations

import pytest

from tests.support import FAULT_FLAGS, MNIST, final_checkpoint, horovodrun


@pytest.fixture(scope="session")
def uninterrupted(tmp_path_factory) -> dict:
    """The fault tests' reference: FAULT_FLAGS on 2 workers start to end with no fault; its
    final checkpoint."""
    run = tmp_path_factory.mktemp("uninterrupted")
    horovodrun(2, [MNIST, *FAULT_FLAGS, "--checkpoint-dir", run / "ckpt", "--metrics-file",
                   run / "metrics.jsonl"], cwd=run)
    return final_checkpoint(run)
