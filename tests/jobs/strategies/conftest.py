"""The one-process references every strategy layout must reach (one real run each, shared by the
test files and the xdist processes)."""

from __future__ import annotations

import pytest

from tests.support import TWO_EPOCHS, final_record, run_single, shared_run


@pytest.fixture(scope="session")
def reference(tmp_path_factory) -> dict:
    """One process, global batch 32, 8 steps: the weights every layout must reach."""
    folder = shared_run(tmp_path_factory, "single", lambda f: run_single(f, "single", 32))
    return final_record(folder / "single" / "m.jsonl")


@pytest.fixture(scope="session")
def two_epochs_alone(tmp_path_factory) -> dict:
    """One process, global batch 32, TWO_EPOCHS: where a resumed layout must end."""
    folder = shared_run(tmp_path_factory, "single-two-epochs",
                        lambda f: run_single(f, "single", 32, *TWO_EPOCHS))
    return final_record(folder / "single" / "m.jsonl")
