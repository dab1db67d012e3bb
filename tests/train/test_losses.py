"""Puzzle-gradient loss and the seam (blockiness) metric."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from voxdiff.errors import VoxdiffError
from voxdiff.losses import gradient_difference_loss, seam_metric


def test_gradient_loss_zero_positive_and_differentiable():
    g = torch.Generator().manual_seed(0)
    target = torch.randn(2, 1, 6, 7, 8, generator=g)
    assert gradient_difference_loss(target, target.clone()).item() == 0.0
    # A constant offset has identical gradients: the loss ignores it.
    assert gradient_difference_loss(target + 3.0, target).item() < 1e-6
    pred = (target + 0.1 * torch.randn(target.shape, generator=g)).requires_grad_(True)
    for norm in ("l1", "l2"):
        loss = gradient_difference_loss(pred, target, norm=norm)
        assert loss.item() > 0
        (grad,) = torch.autograd.grad(loss, pred)
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_gradient_loss_value_and_reductions():
    pred = torch.zeros(1, 1, 3, 3, 3)
    target = torch.zeros(1, 1, 3, 3, 3)
    target[..., 2] = 1.0  # a step along W only: 9 differences of 1 out of 18 along W
    assert gradient_difference_loss(pred, target).item() == pytest.approx((0 + 0 + 0.5) / 3)
    assert gradient_difference_loss(pred, target, reduction="sum").item() == pytest.approx(9.0)
    assert gradient_difference_loss(2 * target, target, norm="l2", reduction="sum").item() == pytest.approx(9.0)
    batch = torch.stack([pred[0], target[0]])
    per = gradient_difference_loss(batch, torch.zeros_like(batch), reduction="none")
    assert per.shape == (2,) and per[0] == 0 and per[1].item() == pytest.approx(0.5 / 3)
    with pytest.raises(VoxdiffError):
        gradient_difference_loss(pred, torch.zeros(1, 1, 3, 3, 4))
    with pytest.raises(VoxdiffError):
        gradient_difference_loss(pred, target, reduction="max")


def _smooth_field(shape=(24, 24, 24), seed=0):
    rng = np.random.default_rng(seed)
    return gaussian_filter(rng.standard_normal(shape), sigma=2.0, mode="wrap")


@pytest.mark.parametrize("r", [2, 4])
def test_seam_metric_natural_vs_blocky(r):
    vol = _smooth_field()
    natural = seam_metric(vol, r)
    assert 0.8 < natural < 1.25
    rng = np.random.default_rng(1)
    n = 24 // r
    offsets = rng.standard_normal((n, n, n)) * vol.std() * 0.5
    blocky = vol + np.kron(offsets, np.ones((r, r, r)))
    assert seam_metric(blocky, r) > 2.0 * natural
    # Torch 5D input gives the same number as numpy 3D.
    t = torch.from_numpy(blocky).float()[None, None]
    assert seam_metric(t, r) == pytest.approx(seam_metric(blocky.astype(np.float32), r), rel=1e-6)


def test_seam_metric_white_noise_and_anisotropic():
    rng = np.random.default_rng(2)
    noise = rng.standard_normal((16, 16, 16))
    assert abs(seam_metric(noise, 2) - 1.0) < 0.1
    # Blocks only along W: detected with factor (1, 1, 4), not confused by axes with r = 1.
    steps = np.repeat(rng.standard_normal(4), 4)[None, None, :] * 2.0
    vol = _smooth_field((8, 8, 16)) + steps
    assert seam_metric(vol, (1, 1, 4)) > 3.0
    with pytest.raises(VoxdiffError):
        seam_metric(noise, 1)
    assert seam_metric(np.ones((4, 4, 4)), 2) == 1.0


def test_worst_seam_metric_finds_a_shifted_grid():
    from voxdiff.losses import worst_seam_metric

    rng = np.random.default_rng(3)
    smooth = np.cumsum(np.cumsum(rng.normal(size=(17, 16, 18)), axis=0), axis=1)
    blocky = smooth.copy()
    # A period-2 grid whose blocks start at index 1 on every axis (as padding by one voxel would leave it).
    for axis, n in enumerate(blocky.shape):
        step = rng.normal(scale=3.0, size=n // 2 + 2)[(np.arange(n) + 1) // 2]  # blocks {0}, {1, 2}, {3, 4}, ...
        blocky += step.reshape([-1 if a == axis else 1 for a in range(3)])
    aligned = seam_metric(blocky[1:, 1:, 1:], 2)
    worst, offset = worst_seam_metric(blocky, 2)
    assert offset == (1, 1, 1)
    assert worst == pytest.approx(aligned, rel=0.05)
    # Without a grid every alignment is near 1; the maximum stays close to it.
    noise = rng.normal(size=(16, 16, 16))
    assert 1.0 <= worst_seam_metric(noise, 2)[0] < 1.1
    with pytest.raises(VoxdiffError):
        worst_seam_metric(noise, 1)
