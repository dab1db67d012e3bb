"""PET metrics (voxdiff.metrics.pet) on hand-built volumes whose answers are known in closed form."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import ndimage as ndi

from voxdiff import metrics as M
from voxdiff.errors import VoxdiffError
from voxdiff.metrics import pet as P

SPACING = (2.0, 2.0, 2.0)


def _sphere(shape, centre, diameter_mm, spacing=SPACING) -> np.ndarray:
    grid = np.indices(shape, dtype=np.float64)
    d2 = sum(((g - c) * s) ** 2 for g, c, s in zip(grid, centre, spacing))
    return np.sqrt(d2) <= diameter_mm / 2


def _lesion_case(diameter_mm, contrast=4.0, shape=(32, 32, 32), background=10.0):
    """Uniform background with one spherical lesion at the centre: (activity, lesion map, lesion list)."""
    centre = [(n - 1) / 2 for n in shape]
    centre = [float(round(c)) for c in centre]
    lesion = _sphere(shape, centre, diameter_mm)
    activity = np.full(shape, background)
    activity[lesion] *= contrast
    lesions = [{"id": 1, "centre_voxel": centre, "diameter_mm": diameter_mm, "contrast": contrast, "region": "WM"}]
    return activity, lesion.astype(np.int16), lesions


# --- NRMSE ---------------------------------------------------------------------------------------

def test_nrmse_is_the_euclidean_normalised_rmse():
    from skimage.metrics import normalized_root_mse

    rng = np.random.default_rng(0)
    target = 5.0 + rng.random((10, 10, 10))
    pred = target + 0.3 * rng.standard_normal(target.shape)
    expected = np.linalg.norm(pred - target) / np.linalg.norm(target)
    assert M.nrmse(pred, target) == pytest.approx(expected, rel=1e-12)
    assert M.nrmse(pred, target) == pytest.approx(normalized_root_mse(target, pred), rel=1e-12)
    assert M.nrmse(1.1 * target, target) == pytest.approx(0.1, rel=1e-12)
    mask = np.zeros(target.shape, bool)
    mask[2:5, 2:5, 2:5] = True
    inside = np.linalg.norm((pred - target)[mask]) / np.linalg.norm(target[mask])
    assert M.image_metrics(pred, target, mask=mask)["nrmse"] == pytest.approx(inside, rel=1e-12)


# --- CRC and BV ----------------------------------------------------------------------------------

def test_crc_is_one_at_perfect_resolution_and_zero_without_the_lesion():
    activity, lesion_map, lesions = _lesion_case(8.0)
    (row,) = P.lesion_crc(activity, lesions, SPACING, truth=activity, lesion_map=lesion_map)
    assert row["crc"] == pytest.approx(1.0, abs=1e-12) and row["crc_truth"] == pytest.approx(1.0, abs=1e-12)
    assert row["roi"] == "map" and row["background"] == "shell"
    assert row["bv"] == 0.0  # constant background
    removed = np.full(activity.shape, 10.0)
    (row,) = P.lesion_crc(removed, lesions, SPACING, truth=activity, lesion_map=lesion_map)
    assert row["crc"] == pytest.approx(0.0, abs=1e-12) and row["crc_truth"] == pytest.approx(1.0, abs=1e-12)
    # Without a lesion map, the ROI is the sphere of the table: the same voxels here.
    (row,) = P.lesion_crc(activity, lesions, SPACING)
    assert row["roi"] == "sphere" and row["crc"] == pytest.approx(1.0, abs=1e-12) and math.isnan(row["crc_truth"])


def test_crc_of_a_blurred_lesion_is_below_one_and_falls_with_diameter():
    crcs = {}
    for diameter in (16.0, 8.0, 4.0):
        activity, lesion_map, lesions = _lesion_case(diameter)
        blurred = ndi.gaussian_filter(activity, sigma=1.5, mode="nearest")  # FWHM 7 mm at 2 mm voxels
        (row,) = P.lesion_crc(blurred, lesions, SPACING, truth=blurred, lesion_map=lesion_map)
        assert row["crc"] == pytest.approx(row["crc_truth"])
        crcs[diameter] = row["crc"]
    assert 1.0 > crcs[16.0] > crcs[8.0] > crcs[4.0] > 0.0, crcs


def test_background_variability_of_gaussian_noise_is_sigma_over_mean():
    rng = np.random.default_rng(1)
    assert P.background_variability(np.full(100, 3.0)) == 0.0
    assert P.background_variability(10.0 + 2.0 * rng.standard_normal(200_000)) == pytest.approx(0.2, rel=0.01)
    activity, lesion_map, lesions = _lesion_case(8.0)
    noisy = activity + 1.0 * rng.standard_normal(activity.shape)  # sigma 1 on a background of 10
    (row,) = P.lesion_crc(noisy, lesions, SPACING, lesion_map=lesion_map)
    assert row["n_background_voxels"] > 1000
    assert row["bv"] == pytest.approx(0.1, rel=0.06)
    assert row["crc"] == pytest.approx(1.0, abs=0.02)


def test_background_is_restricted_to_the_lesion_tissue_and_other_lesions_are_excluded():
    shape = (32, 32, 32)
    regions = np.full(shape, P.REGION_CODES["wm"], np.int16)
    regions[:, 16:] = P.REGION_CODES["gm"]
    image = np.where(regions == P.REGION_CODES["gm"], 4.0, 1.0)
    centre = [16.0, 18.0, 16.0]
    image[_sphere(shape, centre, 4.0)] = 12.0  # contrast 3 over grey matter
    second = [16.0, 28.0, 16.0]  # another lesion inside the first one's shell
    image[_sphere(shape, second, 4.0)] = 40.0
    lesions = [{"id": 1, "centre_voxel": centre, "diameter_mm": 4.0, "contrast": 3.0, "region": "GM"},
               {"id": 2, "centre_voxel": second, "diameter_mm": 4.0, "contrast": 10.0, "region": "GM"}]
    rows = P.lesion_crc(image, lesions, SPACING, regions=regions)
    assert rows[0]["background"] == "tissue_core"
    assert rows[0]["background_mean"] == pytest.approx(4.0)  # no WM, no second lesion
    assert rows[0]["crc"] == pytest.approx(1.0)
    assert P.lesion_crc(image, lesions, SPACING, regions=regions, edge_mm=0)[0]["background"] == "tissue_core"
    # One tissue everywhere: all of it is core.
    uniform = np.full(shape, P.REGION_CODES["gm"], np.int16)
    assert P.lesion_crc(image, lesions, SPACING, regions=uniform)[0]["background"] == "tissue_core"
    # Blurred, the grey matter next to the white matter loses activity to it: the core of the
    # tissue (farther than edge_mm from the WM) keeps the true background, the whole tissue does not.
    blurred = ndi.gaussian_filter(np.where(regions == P.REGION_CODES["gm"], 4.0, 1.0), 1.0)
    core = P.lesion_crc(blurred, lesions[:1], SPACING, regions=regions)[0]
    whole = P.lesion_crc(blurred, lesions[:1], SPACING, regions=regions, edge_mm=0.0)[0]
    assert core["background"] == "tissue_core" and core["background_mean"] == pytest.approx(4.0, rel=0.01)
    assert whole["background_mean"] < 3.9
    # A tissue too thin for a core falls back to all of its voxels.
    thin = regions.copy()
    thin[:, 20:] = P.REGION_CODES["wm"]  # grey matter is now a 4-voxel (8 mm) slab
    assert P.lesion_crc(image, lesions[:1], SPACING, regions=thin, edge_mm=6.0)[0]["background"] == "tissue"
    # Unrestricted, the white matter half pulls the background down and the CRC up.
    (mixed,) = P.lesion_crc(image, lesions[:1], SPACING)
    assert mixed["background"] == "shell" and mixed["background_mean"] < 3.5 and mixed["crc"] > 1.2


def test_crc_summary_bins_lesions_by_size():
    assert P.size_bin(6.0) == 8.0 and P.size_bin(5.0) == 4.0 and P.size_bin(30.0) == 16.0
    rows = [{"diameter_mm": 4.0, "crc": 0.2, "crc_truth": 0.3, "bv": 0.1, "bv_truth": 0.0},
            {"diameter_mm": 4.2, "crc": 0.4, "crc_truth": 0.5, "bv": 0.3, "bv_truth": 0.0},
            {"diameter_mm": 16.0, "crc": 0.9, "crc_truth": 0.95, "bv": 0.2, "bv_truth": 0.0}]
    s = P.crc_summary(rows)
    assert s["n_lesions"] == 3 and s["crc_4mm"] == pytest.approx(0.3) and s["crc_truth_4mm"] == pytest.approx(0.4)
    assert math.isnan(s["crc_8mm"]) and s["crc_16mm"] == pytest.approx(0.9) and s["bv"] == pytest.approx(0.2)
    assert list(P.crc_summary([], (5, 10))) == ["n_lesions", "crc_5mm", "crc_10mm", "crc_truth_5mm", "crc_truth_10mm",
                                                 "bv", "bv_truth"]


# --- regional bias -------------------------------------------------------------------------------

def test_regional_bias_sign_scale_and_lesion_exclusion():
    shape = (16, 16, 16)
    regions = np.zeros(shape, np.int16)
    for i, name in enumerate(P.PET_REGIONS):
        regions[4 * i:4 * i + 4] = P.REGION_CODES[name]
    rng = np.random.default_rng(2)
    reference = 1.0 + rng.random(shape)
    bias = P.regional_bias(1.1 * reference, reference, regions)
    assert list(bias) == [f"bias_{r}" for r in P.PET_REGIONS]
    assert all(v == pytest.approx(10.0) for v in bias.values())
    assert P.regional_bias(0.95 * reference, reference, regions)["bias_wm"] == pytest.approx(-5.0)
    lesion_map = np.zeros(shape, np.int16)
    lesion_map[0:2, 0:2, 0:2] = 1
    pred = 1.1 * reference
    pred[lesion_map > 0] *= 10  # a lesion does not count towards its region's bias
    assert P.regional_bias(pred, reference, regions, lesion_map)["bias_gm"] == pytest.approx(10.0)
    regions[regions == P.REGION_CODES["cerebellum"]] = 0
    assert math.isnan(P.regional_bias(pred, reference, regions)["bias_cerebellum"])


def test_pet_region_map_groups_muse_labels(shared_data):
    labels = np.array([[[0, 4, 36, 57, 59, 23, 55, 38, 71, 40, 81, 100, 47, 61]]], dtype=np.int16)
    codes = P.pet_region_map(labels, shared_data / "ixi-t1-2mm")
    c = P.REGION_CODES
    assert codes.ravel().tolist() == [0, 0, c["deep_gm"], c["deep_gm"], c["deep_gm"], c["deep_gm"], c["deep_gm"],
                                      c["cerebellum"], c["cerebellum"], c["wm"], c["wm"], c["gm"], c["other"], c["other"]]


# --- hot spots -----------------------------------------------------------------------------------

def _smooth_brain(shape=(32, 32, 32)) -> np.ndarray:
    x = np.linspace(0, 1, shape[0])[:, None, None]
    return 10.0 + 3.0 * x + np.zeros(shape)  # a gentle gradient: no hot spot


def test_no_hotspot_in_a_smooth_image():
    truth = _smooth_brain()
    out = P.hotspots(truth, truth, SPACING)
    assert out["hotspots"] == 0 and out["spots"] == [] and out["hotspot_peak"] < 1.1
    noisy_smooth = ndi.gaussian_filter(truth + np.random.default_rng(3).standard_normal(truth.shape), 2.0)
    assert P.hotspots(noisy_smooth, truth, SPACING)["hotspots"] == 0


def test_an_invented_blob_is_counted_once_with_its_peak_contrast():
    truth = np.full((32, 32, 32), 10.0)
    pred = truth.copy()
    blob = _sphere(truth.shape, (12, 16, 20), 6.0)
    pred[blob] = 30.0  # contrast 3 over the local background
    mask = np.ones(truth.shape, bool)
    out = P.hotspots(pred, truth, SPACING, mask=mask)
    assert out["hotspots"] == 1
    (spot,) = out["spots"]
    assert spot["peak_contrast"] == pytest.approx(3.0, rel=1e-9)  # the blob is left out of its background
    assert spot["n_voxels"] == int(blob.sum()) and blob[tuple(spot["voxel"])]
    assert out["hotspot_peak"] == pytest.approx(3.0, rel=1e-9)
    # A blob below the threshold is not counted; the peak says by how much it stays under it
    # (1.3 over a background that this sub-threshold blob raises by < 1 %).
    weak = truth.copy()
    weak[blob] = 13.0
    out = P.hotspots(weak, truth, SPACING, mask=mask)
    assert out["hotspots"] == 0 and out["hotspot_peak"] == pytest.approx(1.3, rel=0.01)
    # Two classes: the blob's background is its own tissue's mean.
    regions = np.full(truth.shape, P.REGION_CODES["wm"], np.int16)
    regions[:, :, 24:] = P.REGION_CODES["gm"]
    truth2 = np.where(regions == P.REGION_CODES["gm"], 40.0, 10.0)
    pred2 = truth2.copy()
    pred2[blob] = 30.0
    out = P.hotspots(pred2, truth2, SPACING, regions=regions)
    assert out["hotspots"] == 1 and out["spots"][0]["peak_contrast"] == pytest.approx(3.0, rel=1e-9)


def test_a_true_lesion_is_not_a_hotspot():
    activity, lesion_map, lesions = _lesion_case(8.0, contrast=3.0)
    truth = ndi.gaussian_filter(activity, 1.0, mode="nearest")
    assert P.hotspots(truth, truth, SPACING)["hotspots"] == 0
    # A sharper prediction of the same lesion is still the true lesion (within one voxel of it).
    assert P.hotspots(activity, truth, SPACING)["hotspots"] == 0
    # Even a lesion too faint in the truth to pass the threshold is excluded through the lesion list.
    faint = np.full(activity.shape, 10.0)
    assert P.hotspots(activity, faint, SPACING)["hotspots"] == 1
    assert P.hotspots(activity, faint, SPACING, lesions=lesions)["hotspots"] == 0
    assert P.hotspots(activity, faint, SPACING, lesion_map=lesion_map)["hotspots"] == 0


# --- one case, all metrics -----------------------------------------------------------------------

def test_pet_metrics_columns_and_details():
    activity, lesion_map, lesions = _lesion_case(8.0)
    regions = np.full(activity.shape, P.REGION_CODES["wm"], np.int16)
    truth = ndi.gaussian_filter(activity, 1.0, mode="nearest")
    target = truth + np.random.default_rng(4).standard_normal(truth.shape) * 0.1
    out = P.pet_metrics(1.1 * truth, SPACING, target=target, truth=truth, regions=regions, lesion_map=lesion_map,
                        lesions=lesions)
    m = out["metrics"]
    for key in ("psnr", "ssim", "nrmse", "psnr_truth", "ssim_truth", "nrmse_truth", "bias_gm", "bias_wm", "bias_deep_gm",
                "bias_cerebellum", "n_lesions", "crc_4mm", "crc_8mm", "crc_16mm", "crc_truth_8mm", "bv", "bv_truth",
                "hotspots", "hotspot_peak"):
        assert key in m, key
    assert m["nrmse_truth"] == pytest.approx(0.1) and m["bias_wm"] == pytest.approx(10.0)
    assert m["crc_8mm"] == pytest.approx(m["crc_truth_8mm"]) and math.isnan(m["crc_4mm"])
    assert m["hotspots"] == 0 and len(out["lesions"]) == 1 and out["lesions"][0]["id"] == 1
    assert all(isinstance(v, float) for v in m.values())
    free = P.pet_metrics(truth, SPACING, truth=truth, lesions=[])["metrics"]
    assert free["n_lesions"] == 0 and math.isnan(free["crc_8mm"]) and "psnr" not in free


def test_shape_mismatch_and_bad_lesion_tables_raise(tmp_path):
    a, b = np.ones((8, 8, 8)), np.ones((8, 8, 9))
    with pytest.raises(VoxdiffError, match="truth shape"):
        P.pet_metrics(a, SPACING, truth=b)
    with pytest.raises(VoxdiffError, match="region map shape"):
        P.regional_bias(a, a, np.ones((8, 8, 9), int))
    with pytest.raises(VoxdiffError, match="lesion map shape"):
        P.lesion_crc(a, [], SPACING, lesion_map=np.zeros((8, 8, 9), int))
    with pytest.raises(VoxdiffError, match="outside"):
        P.lesion_crc(a, [{"id": 1, "centre_voxel": [20, 1, 1], "diameter_mm": 4, "contrast": 2}], SPACING)
    with pytest.raises(VoxdiffError, match="contrast"):
        P.lesion_specs({"lesions": [{"id": 1, "centre_voxel": [1, 1, 1], "diameter_mm": 4}]})
    with pytest.raises(VoxdiffError, match="lesion_free"):
        P.lesion_specs({"lesion_free": True, "lesions": [{"id": 1, "centre_voxel": [1, 1, 1], "diameter_mm": 4,
                                                           "contrast": 2}]})
    with pytest.raises(VoxdiffError, match="not found"):
        P.read_lesion_json(tmp_path / "none_lesions.json")
    bad = tmp_path / "bad_lesions.json"
    bad.write_text("{not json")
    with pytest.raises(VoxdiffError, match="bad_lesions.json"):
        P.read_lesion_json(bad)
    good = tmp_path / "c_lesions.json"
    good.write_text(json.dumps({"case": "c", "lesion_free": True, "lesions": []}))
    assert P.read_lesion_json(good) == {"case": "c", "lesion_free": True, "lesions": []}
