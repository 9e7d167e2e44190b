"""The one-process references every strategy layout must reach (one real run each, shared)."""

from __future__ import annotations

import pytest

from tests.support import TWO_EPOCHS, run_single


@pytest.fixture(scope="session")
def reference(tmp_path_factory) -> dict:
    """One process, global batch 32, 8 steps: the weights every layout must reach."""
    return run_single(tmp_path_factory.mktemp("single"), "single", 32)


@pytest.fixture(scope="session")
def two_epochs_alone(tmp_path_factory) -> dict:
    """One process, global batch 32, TWO_EPOCHS: where a resumed layout must end."""
    return run_single(tmp_path_factory.mktemp("single2"), "single", 32, *TWO_EPOCHS)
