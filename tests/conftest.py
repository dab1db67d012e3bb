"""Shared fixtures: tiny synthetic volumes, and the real-data folder (skipped when absent)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from voxdiff.paths import shared_data_dir


@pytest.fixture(autouse=True)
def _few_threads():
    # Tiny test tensors run fastest on one thread (and CI has only two cores).
    torch.set_num_threads(1)
    yield


@pytest.fixture
def shared_data() -> Path:
    """The real-data folder ``../shared/data``; the test is skipped with a reason when it is absent."""
    d = shared_data_dir()
    if not d.exists():
        pytest.skip(f"real data folder {d} not found (set VOXDIFF_DATA or place ../shared/data beside the repo)")
    return d


@pytest.fixture
def tiny_affine() -> np.ndarray:
    """A non-trivial affine (anisotropic spacing, offset, axis flip) for geometry tests."""
    aff = np.diag([-1.5, 2.0, 2.5, 1.0])
    aff[:3, 3] = [10.0, -20.0, 5.0]
    return aff
