"""Fixtures shared by the job tests: reference runs that several test files compare against.

Each is one real job for the whole session (both xdist processes read the same run).
"""

from __future__ import annotations

import pytest

from tests.support import (
    FAULT_FLAGS,
    MNIST,
    Launched,
    final_checkpoint,
    horovodrun,
    launch_short,
    read_launched,
    shared_run,
)


@pytest.fixture(scope="session")
def uninterrupted(tmp_path_factory) -> dict:
    """The fault tests' reference: FAULT_FLAGS on 2 workers start to end with no fault; its
    final checkpoint."""
    def make(run):
        horovodrun(2, [MNIST, *FAULT_FLAGS, "--checkpoint-dir", run / "ckpt", "--metrics-file",
                       run / "metrics.jsonl"], cwd=run)

    return final_checkpoint(shared_run(tmp_path_factory, "uninterrupted", make))


@pytest.fixture(scope="session")
def launched(tmp_path_factory):
    """``launched(framework, launcher)``: tests.support.SHORT on 2 workers of the ``framework``
    ("pytorch", "tensorflow") MNIST recipe, launched once for the session by ``launcher``
    ("horovodrun", "gloo", "mpirun"): the first screen, the runtime settings and the
    mpirun-against-horovodrun tests read the same jobs."""
    def get(framework: str, launcher: str) -> Launched:
        return read_launched(shared_run(tmp_path_factory, f"launched-{framework}-{launcher}",
                                        lambda f: launch_short(f, framework, launcher)))

    return get
