"""The one-process references every strategy layout must reach (one real run each, shared by the
test files and the xdist processes)."""

from __future__ import annotations

import pytest

from tests.support import TWO_EPOCHS, final_record, run_single, shared_run, write_mnist


@pytest.fixture(scope="session")
def reference(tmp_path_factory) -> dict:
    """One process, global batch 32, 8 steps: the weights every layout must reach."""
    folder = shared_run(tmp_path_factory, "single", lambda f: run_single(f, "single", 32))
    return final_record(folder / "single" / "m.jsonl")


@pytest.fixture(scope="session")
def two_epochs_data(tmp_path_factory) -> list[str]:
    """``--data-dir`` flags for the resume tests: 320 8x8 training images, 10 steps of 32 an
    epoch. Few steps on purpose: the layouts add the same gradients in another order (float
    round-off of 1e-7), and over the 88 steps of two epochs of the digits a ReLU or max-pool
    flipped by it on some CPUs (seen on an AMD EPYC at step 53) grew the difference to 2e-3."""
    folder = shared_run(tmp_path_factory, "two-epochs-data",
                        lambda f: write_mnist(f, n_train=320, n_val=64, size=8))
    return ["--data-dir", str(folder)]


@pytest.fixture(scope="session")
def two_epochs_alone(tmp_path_factory, two_epochs_data) -> dict:
    """One process, global batch 32, TWO_EPOCHS on two_epochs_data: where a resumed layout
    must end."""
    folder = shared_run(tmp_path_factory, "single-two-epochs",
                        lambda f: run_single(f, "single", 32, *TWO_EPOCHS, *two_epochs_data))
    return final_record(folder / "single" / "m.jsonl")
