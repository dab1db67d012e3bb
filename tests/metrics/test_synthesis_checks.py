"""voxdiff.metrics.synthesis: the label-free distribution checks of synthetic volumes."""

from __future__ import annotations

import numpy as np
import pytest

from voxdiff.metrics.synthesis import (describe, head_mask, kmeans_1d, nearest_rmse, otsu, pairwise_rmse,
                                       wasserstein_1d)


def _head(size: int = 24, seed: int = 0) -> np.ndarray:
    """A ball of three tissue levels (0.4, 0.6, 0.9) in a zero background, with a dark hole inside."""
    g = np.stack(np.meshgrid(*[np.arange(size) - (size - 1) / 2] * 3, indexing="ij"))
    r = np.sqrt((g ** 2).sum(0))
    vol = np.select([r < 2, r < 5, r < 8, r < 10], [0.0, 0.9, 0.6, 0.4], 0.0)
    return vol + np.random.default_rng(seed).normal(0, 0.01, vol.shape)


def test_head_mask_fills_holes_and_keeps_the_largest_component():
    vol = _head()
    vol[0, 0, 0] = 1.0  # a bright speck outside the head
    mask = head_mask(vol)
    r = np.sqrt((np.stack(np.meshgrid(*[np.arange(24) - 11.5] * 3, indexing="ij")) ** 2).sum(0))
    assert not mask[0, 0, 0] and mask[r < 2].all()  # the speck is dropped, the dark core filled
    assert 0.02 < otsu(vol.ravel()) < 0.4  # between the background and the dimmest tissue
    assert abs(mask.sum() - (r < 10).sum()) < 0.05 * (r < 10).sum()


def test_kmeans_wasserstein_and_rmse():
    rng = np.random.default_rng(1)
    x = np.concatenate([rng.normal(m, 0.01, 500) for m in (0.2, 0.5, 0.8)])
    assert kmeans_1d(rng.permutation(x)) == pytest.approx([0.2, 0.5, 0.8], abs=0.01)
    assert wasserstein_1d(x, x + 0.3) == pytest.approx(0.3, abs=1e-6)
    a, b = np.zeros((4, 4, 4)), np.ones((4, 4, 4))
    assert pairwise_rmse([a, b, b]) == pytest.approx(2 / 3)
    assert nearest_rmse([a, b], [b + 2, a + 0.5]) == pytest.approx([0.5, 0.5])
    row = describe([_head()], spacing_mm=2.0)[0]
    assert row["tissue_means"] == pytest.approx([0.4, 0.6, 0.9], abs=0.05)
    assert row["head_litres"] == pytest.approx(head_mask(_head()).sum() * 8 / 1e6)
