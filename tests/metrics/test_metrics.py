"""Metrics against hand-computable cases and against MONAI's reference implementations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from voxdiff import metrics as M
from voxdiff.errors import VoxdiffError


def _ramp(shape=(12, 12, 12)) -> np.ndarray:
    return np.arange(np.prod(shape), dtype=np.float64).reshape(shape) / 10.0


def _noisy_pair(shape=(16, 16, 16), seed=0):
    """Target with structure, prediction whose noise grows along x (so SSIM varies in space)."""
    rng = np.random.default_rng(seed)
    target = 100.0 + 50.0 * rng.random(shape)
    ramp = np.linspace(0.0, 1.0, shape[0])[:, None, None]
    pred = target + 20.0 * ramp * rng.standard_normal(shape)
    return pred, target


def _cube(shape, lo, size):
    m = np.zeros(shape, dtype=bool)
    m[tuple(slice(a, a + size) for a in lo)] = True
    return m


# --- image metrics -----------------------------------------------------------------------------

def test_psnr_mae_nmse_of_a_constant_offset():
    target = _ramp()
    pred = target + 0.5
    rng = float(target.max() - target.min())
    out = M.image_metrics(pred, target)
    assert out["data_range"] == pytest.approx(rng)
    assert out["psnr"] == pytest.approx(10 * math.log10(rng**2 / 0.25), rel=1e-12)
    assert out["mae"] == pytest.approx(0.5, rel=1e-12)
    assert out["nmse"] == pytest.approx(0.25 * target.size / np.sum(target**2), rel=1e-12)


def test_psnr_uses_the_given_data_range_and_is_inf_for_identical_volumes():
    target = _ramp()
    assert M.psnr(target + 1.0, target, data_range=10.0) == pytest.approx(20.0)
    assert M.psnr(target, target, data_range=10.0) == math.inf
    assert M.image_metrics(target + 1.0, target, data_range=100.0)["psnr"] == pytest.approx(40.0)


def test_nmse_of_a_scaled_prediction():
    target = _ramp() + 1.0
    assert M.nmse(1.1 * target, target) == pytest.approx(0.01, rel=1e-10)
    assert M.nmse(np.zeros(4), np.zeros(4)) == 0.0
    assert M.nmse(np.ones(4), np.zeros(4)) == math.inf


def test_mask_excludes_outside_voxels_and_sets_the_default_range():
    target = _ramp()
    mask = np.zeros(target.shape, dtype=bool)
    mask[2:6, 2:6, 2:6] = True
    pred = target.copy()
    pred[~mask] += 1000.0  # errors only outside the mask
    out = M.image_metrics(pred, target, mask=mask)
    assert out["psnr"] == math.inf and out["mae"] == 0.0 and out["nmse"] == 0.0
    inside = target[mask]
    assert out["data_range"] == pytest.approx(inside.max() - inside.min())
    assert M.default_data_range(target) == pytest.approx(target.max() - target.min())
    pred[mask] += 2.0
    assert M.mae(pred, target, mask) == pytest.approx(2.0)


def test_ssim_matches_monai_without_mask():
    from monai.metrics import SSIMMetric

    pred, target = _noisy_pair()
    rng = 50.0
    ref = SSIMMetric(spatial_dims=3, data_range=rng, win_size=11, kernel_sigma=1.5)(
        torch.tensor(pred[None, None]), torch.tensor(target[None, None])).item()
    assert M.ssim(pred, target, rng) == pytest.approx(ref, abs=2e-5)
    assert M.ssim(target, target, rng) == pytest.approx(1.0, abs=1e-6)


def test_ssim_masked_is_the_map_mean_over_the_mask():
    from monai.metrics.regression import compute_ssim_and_cs

    pred, target = _noisy_pair()
    rng = 50.0
    smap, _ = compute_ssim_and_cs(torch.tensor(pred[None, None]), torch.tensor(target[None, None]), spatial_dims=3,
                                  kernel_size=[11] * 3, kernel_sigma=[1.5] * 3, data_range=rng)
    smap = smap[0, 0].double().numpy()  # covers voxels 5..10 along each axis
    mask = np.zeros(pred.shape, dtype=bool)
    mask[:8] = True  # the low-noise half (plus border voxels, which the map does not cover)
    expected = smap[mask[5:11, 5:11, 5:11]].mean()
    got = M.ssim(pred, target, rng, mask=mask)
    assert got == pytest.approx(expected, abs=2e-5)
    assert got > M.ssim(pred, target, rng, mask=~mask)  # the noisier half scores lower
    assert M.ssim(pred, target, rng, mask=np.ones(pred.shape, bool)) == pytest.approx(M.ssim(pred, target, rng), abs=1e-9)
    border_only = np.zeros(pred.shape, dtype=bool)
    border_only[0] = True
    assert math.isnan(M.ssim(pred, target, rng, mask=border_only))


def test_ssim_small_axis_uses_the_largest_odd_window():
    from monai.metrics import SSIMMetric

    pred, target = _noisy_pair(shape=(14, 13, 4))
    ref = SSIMMetric(spatial_dims=3, data_range=50.0, win_size=(11, 11, 3))(
        torch.tensor(pred[None, None]), torch.tensor(target[None, None])).item()
    assert M.ssim(pred, target, 50.0) == pytest.approx(ref, abs=2e-5)


def test_ssim_is_invariant_to_a_common_scale_and_falls_with_noise():
    pred, target = _noisy_pair()
    base = M.ssim(pred, target, 50.0)
    assert M.ssim(pred * 7.0, target * 7.0, 350.0) == pytest.approx(base, abs=1e-5)
    noisier = target + 2.0 * (pred - target)
    assert M.ssim(noisier, target, 50.0) < base < 1.0


@pytest.mark.parametrize("case", ["shape", "nan", "empty_mask", "constant", "mask_shape"])
def test_image_metric_errors(case):
    target = _ramp()
    pred, mask = target + 1.0, None
    if case == "shape":
        pred = pred[:-1]
    elif case == "nan":
        pred[0, 0, 0] = np.nan
    elif case == "empty_mask":
        mask = np.zeros(target.shape, dtype=bool)
    elif case == "constant":
        target = np.full(target.shape, 3.0)
    elif case == "mask_shape":
        mask = np.ones((2, 2, 2), dtype=bool)
    with pytest.raises(VoxdiffError):
        M.image_metrics(pred, target, mask=mask)


# --- segmentation metrics ----------------------------------------------------------------------

def test_dice_of_two_overlapping_cubes():
    a = _cube((16, 16, 16), (4, 4, 4), 8)
    b = _cube((16, 16, 16), (6, 4, 4), 8)  # shifted 2 voxels: overlap 6x8x8
    assert M.dice(a, b) == pytest.approx(2 * 384 / (512 + 512))
    assert M.dice(a, a) == 1.0
    assert M.dice(a, ~a) == 0.0


@pytest.mark.parametrize("axis,spacing", [(0, (1.5, 1.0, 1.0)), (2, (1.0, 1.0, 2.5)), (1, (0.5, 3.0, 2.0))])
def test_hd95_of_shifted_cubes_is_shift_times_spacing(axis, spacing):
    lo = [4, 4, 4]
    a = _cube((18, 18, 18), lo, 8)
    lo[axis] += 2
    b = _cube((18, 18, 18), lo, 8)
    assert M.hd95(a, b, spacing) == pytest.approx(2 * spacing[axis])
    assert M.hd95(b, a, spacing) == pytest.approx(2 * spacing[axis])
    assert M.hd95(a, a, spacing) == 0.0


def test_hd95_of_single_voxels():
    p = np.zeros((8, 8, 8), bool)
    q = p.copy()
    p[2, 2, 2] = True
    q[2, 6, 5] = True
    assert M.hd95(p, q, (1.0, 2.0, 3.0)) == pytest.approx(math.hypot(4 * 2.0, 3 * 3.0))


def test_empty_structure_conventions():
    empty = np.zeros((8, 8, 8), bool)
    full = _cube((8, 8, 8), (2, 2, 2), 3)
    assert (M.dice(empty, empty), M.hd95(empty, empty)) == (1.0, 0.0)
    assert M.dice(full, empty) == 0.0 and M.dice(empty, full) == 0.0
    assert math.isnan(M.hd95(full, empty)) and math.isnan(M.hd95(empty, full))


def test_segmentation_metrics_per_label():
    shape = (16, 16, 16)
    true = np.zeros(shape, np.uint8)
    pred = np.zeros(shape, np.float32)  # float label maps (as read from disk) are accepted
    true[_cube(shape, (2, 2, 2), 6)] = 1
    pred[_cube(shape, (2, 2, 3), 6)] = 1  # shifted 1 voxel along z
    true[_cube(shape, (10, 10, 10), 4)] = 2
    pred[_cube(shape, (10, 10, 10), 4)] = 2  # perfect
    pred[0, 0, 0] = 3  # only in the prediction
    out = M.segmentation_metrics(pred, true, spacing=(1.0, 1.0, 2.0))
    assert sorted(out) == [1, 2, 3]
    assert out[1]["dice"] == pytest.approx(2 * 5 * 36 / (216 + 216))
    assert out[1]["hd95"] == pytest.approx(2.0)
    assert out[2] == {"dice": 1.0, "hd95": 0.0}
    assert out[3]["dice"] == 0.0 and math.isnan(out[3]["hd95"])
    chosen = M.segmentation_metrics(pred, true, labels=[2, 4])
    assert list(chosen) == [2, 4] and chosen[4] == {"dice": 1.0, "hd95": 0.0}


def test_segmentation_rejects_non_integer_labels_and_shape_mismatch():
    with pytest.raises(VoxdiffError, match="label map"):
        M.segmentation_metrics(np.full((4, 4, 4), 0.5), np.zeros((4, 4, 4)))
    with pytest.raises(VoxdiffError, match="shape"):
        M.segmentation_metrics(np.zeros((4, 4, 4)), np.zeros((4, 4, 5)))


def test_summarize_mean_std_and_nonfinite():
    rows = [{"psnr": 30.0, "ssim": 0.9}, {"psnr": 20.0, "ssim": 0.7}, {"psnr": math.inf, "ssim": 0.8}]
    s = M.summarize(rows)
    assert s["psnr"] == {"mean": 25.0, "std": 5.0, "n": 2, "n_nonfinite": 1}
    assert s["ssim"]["mean"] == pytest.approx(0.8)
    assert s["ssim"]["std"] == pytest.approx(np.std([0.9, 0.7, 0.8]))
    assert s["ssim"]["n"] == 3
    nan_only = M.summarize([{"hd95": math.nan}])["hd95"]
    assert math.isnan(nan_only["mean"]) and nan_only["n"] == 0 and nan_only["n_nonfinite"] == 1


def test_ssim_stays_accurate_on_large_intensity_offsets():
    # Raw scanner/CT intensities sit far from zero: local variances must not lose precision.
    import torch.nn.functional as F

    pred, target = _noisy_pair()
    pred, target = pred + 1e4, target + 1e4
    g = torch.exp(-((torch.arange(-5.0, 6.0, dtype=torch.float64) / 1.5) ** 2) / 2)
    g = g / g.sum()
    kernel = (g[:, None, None] * g[None, :, None] * g[None, None, :])[None, None]
    x, y = torch.tensor(pred[None, None]), torch.tensor(target[None, None])
    mx, my = F.conv3d(x, kernel), F.conv3d(y, kernel)
    sx, sy = F.conv3d(x * x, kernel) - mx**2, F.conv3d(y * y, kernel) - my**2
    sxy = F.conv3d(x * y, kernel) - mx * my
    c1, c2 = (0.01 * 50.0) ** 2, (0.03 * 50.0) ** 2
    ref = (((2 * mx * my + c1) / (mx**2 + my**2 + c1)) * ((2 * sxy + c2) / (sx + sy + c2))).mean().item()
    assert M.ssim(pred, target, 50.0) == pytest.approx(ref, abs=1e-5)


@pytest.mark.filterwarnings("ignore::FutureWarning")  # MONAI warns about its own internal argument
def test_dice_and_hd95_match_monai_on_uncropped_irregular_masks():
    # The bounding-box crop must not change either value, also for blobs touching the border.
    from monai.metrics import compute_dice, compute_hausdorff_distance
    from scipy.ndimage import binary_dilation

    rng = np.random.default_rng(4)
    shape = (20, 18, 16)
    a = binary_dilation(rng.random(shape) > 0.995, iterations=2)
    b = binary_dilation(rng.random(shape) > 0.995, iterations=2)
    a[0, :4, :4] = True  # touches the volume border
    t = lambda m: torch.tensor(m[None, None], dtype=torch.float32)  # noqa: E731
    spacing = [1.0, 1.5, 2.5]
    ref_hd = compute_hausdorff_distance(t(a), t(b), include_background=True, percentile=95, spacing=spacing).item()
    ref_dice = compute_dice(t(a), t(b), include_background=True).item()
    assert M.hd95(a, b, spacing) == pytest.approx(ref_hd, rel=1e-6)
    assert M.dice(a, b) == pytest.approx(ref_dice, rel=1e-6)
