"""PET simulation on label maps: uptake tables, determinism, noise statistics, CLI."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from tests.helpers import muse_sim_tables

from voxdiff.data import load_manifest
from voxdiff.errors import VoxdiffError
from voxdiff.io import Volume, load_volume, save_volume
from voxdiff.sim.pet import (
    BRAINWEB_UPTAKE,
    MUSE_UPTAKE,
    head_mask_from_image,
    load_muse_tables,
    muse_region_classes,
    simulate_pet,
)

# Label values of the tiny MUSE-like tables below.
VENT, CAUDATE, THAL, WM, GM, HIPPO, CORT_CSF = 4, 36, 59, 81, 142, 47, 1


@pytest.fixture
def tables(tmp_path):
    return muse_sim_tables(tmp_path / "tables")


def _labels(array: np.ndarray, affine: np.ndarray | None = None) -> Volume:
    aff = np.diag([2.0, 2.0, 2.0, 1.0]) if affine is None else affine
    return Volume(array=array.astype(np.float32), affine=aff, disk_dtype=np.dtype(np.uint8))


def _brain(shape=(16, 16, 16)) -> np.ndarray:
    """A small 'brain': GM shell, WM core, a few deep structures, ventricle; background corner."""
    lab = np.zeros(shape, np.int32)
    lab[2:14, 2:14, 2:14] = GM
    lab[4:12, 4:12, 4:12] = WM
    lab[6:8, 6:8, 6:8] = VENT
    lab[9:11, 5:7, 5:7] = CAUDATE
    lab[9:11, 9:11, 9:11] = THAL
    lab[5:7, 9:11, 9:11] = HIPPO
    return lab


def test_muse_region_classes(tables):
    names, derived = load_muse_tables(tables)
    classes = muse_region_classes([0, CORT_CSF, VENT, CAUDATE, HIPPO, THAL, WM, GM, 69], names, derived)
    assert classes == {CORT_CSF: "csf", VENT: "csf", CAUDATE: "striatum", HIPPO: "mesial_temporal",
                       THAL: "thalamus", WM: "wm", GM: "cortical_gm", 69: "other"}


def test_same_seed_same_images_and_other_seed_differs(tables, tiny_affine):
    vol = _labels(_brain(), tiny_affine)
    a = simulate_pet(vol, seed=3, tables_dir=tables)
    b = simulate_pet(vol, seed=3, tables_dir=tables)
    c = simulate_pet(vol, seed=4, tables_dir=tables)
    np.testing.assert_array_equal(a.full.array, b.full.array)
    np.testing.assert_array_equal(a.low.array, b.low.array)
    assert a.params == b.params
    assert not np.array_equal(a.full.array, c.full.array)
    assert not np.array_equal(a.activity.array, c.activity.array)  # regional factors differ too


def test_geometry_and_dtype_preserved(tables, tiny_affine):
    vol = _labels(_brain((16, 12, 10)), tiny_affine)
    full, low, activity, params = simulate_pet(vol, tables_dir=tables)
    for out in (full, low, activity):
        assert out.shape == vol.shape
        np.testing.assert_array_equal(out.affine, tiny_affine)
        assert out.array.dtype == np.float32
    # PSF sigma per axis follows the anisotropic spacing (1.5, 2, 2.5 mm).
    assert params["psf_sigma_voxels"][0] > params["psf_sigma_voxels"][1] > params["psf_sigma_voxels"][2]


def test_gm_wm_activity_ratio(tables):
    lab = np.full((16, 16, 16), WM, np.int32)
    lab[:8] = GM
    exact = simulate_pet(_labels(lab), region_sd=0.0, head_margin_mm=0, tables_dir=tables).activity.array
    assert exact[lab == GM].mean() / exact[lab == WM].mean() == pytest.approx(4.0, rel=1e-6)
    varied = simulate_pet(_labels(lab), region_sd=0.1, seed=1, head_margin_mm=0, tables_dir=tables).activity.array
    ratio = varied[lab == GM].mean() / varied[lab == WM].mean()
    assert 4.0 * np.exp(-0.45) < ratio < 4.0 * np.exp(0.45) and ratio != pytest.approx(4.0, rel=1e-6)
    # Deep nuclei above cortex, ventricles near zero.
    deep = simulate_pet(_labels(_brain()), region_sd=0.0, tables_dir=tables).activity.array
    lab = _brain()
    assert deep[lab == CAUDATE].mean() > deep[lab == GM].mean() > deep[lab == WM].mean() > 10 * deep[lab == VENT].mean()


def test_low_dose_noise_statistics(tables):
    """Uniform region: E[low] = E[full] = expected counts; var(low)/var(full) ~ 1/fraction."""
    lab = np.full((24, 24, 24), WM, np.int32)
    fraction = 0.1
    full, low, activity, params = simulate_pet(_labels(lab), dose_fraction=fraction, mean_brain_counts=100.0,
                                               region_sd=0.0, seed=7, tables_dir=tables)
    inner = (slice(5, 19),) * 3  # > 4 PSF sigmas from the field-of-view edge
    expected = float(activity.array[inner].mean())
    assert full.array[inner].mean() == pytest.approx(expected, rel=0.01)
    assert low.array[inner].mean() == pytest.approx(expected, rel=0.03)
    ratio = low.array[inner].var() / full.array[inner].var()
    assert ratio == pytest.approx(1.0 / fraction, rel=0.15)
    assert full.array[inner].var() == pytest.approx(expected, rel=0.15)  # Poisson: variance = mean
    assert np.all(np.mod(low.array * fraction, 1.0) < 1e-3)  # low-dose counts are integers / fraction
    assert 0 < params["psnr_low_vs_full_db"] < 60


def test_total_counts_and_psnr_order(tables):
    vol = _labels(_brain())
    hi = simulate_pet(vol, counts=2e6, tables_dir=tables)
    assert hi.full.array.sum() == pytest.approx(2e6, rel=0.01)
    lower = simulate_pet(vol, counts=2e6, dose_fraction=0.01, tables_dir=tables)
    assert lower.params["psnr_low_vs_full_db"] < hi.params["psnr_low_vs_full_db"]


def test_head_tissue_from_margin(tables):
    lab = np.zeros((20, 20, 20), np.int32)
    lab[7:13, 7:13, 7:13] = WM
    with_head = simulate_pet(_labels(lab), head_margin_mm=4.0, region_sd=0.0, tables_dir=tables)
    act = with_head.activity.array
    head = MUSE_UPTAKE["head"] * with_head.params["counts_scale"]
    # 2 and 4 mm from the brain: head tissue; 6 mm (and the corner): outside the head.
    assert act[6, 10, 10] == pytest.approx(head) and act[10, 5, 10] == pytest.approx(head)
    assert act[4, 10, 10] == 0 and act[0, 0, 0] == 0
    none = simulate_pet(_labels(lab), head_margin_mm=0, tables_dir=tables)
    assert np.all(none.activity.array[lab == 0] == 0)
    mask = np.zeros(lab.shape, bool)
    mask[2:18, 2:18, 2:18] = True
    given = simulate_pet(_labels(lab), head_mask=mask, region_sd=0.0, tables_dir=tables)
    assert given.params["head_mask"] == "given" and given.activity.array[3, 3, 3] > 0


def test_head_mask_from_image_fills_dark_inside():
    img = np.zeros((20, 20, 20), np.float32)
    img[4:16, 4:16, 4:16] = 100.0
    img[8:12, 8:12, 8:12] = 0.0  # dark "skull/CSF" inside the head
    mask = head_mask_from_image(Volume(img, np.eye(4)))
    assert mask[10, 10, 10] and mask[5, 5, 5] and not mask[1, 1, 1]


def test_brainweb_scheme():
    lab = np.zeros((16, 16, 16), np.int32)
    lab[2:14, 2:14, 2:14] = 7   # skull
    lab[4:12, 4:12, 4:12] = 2   # GM
    lab[6:10, 6:10, 6:10] = 3   # WM
    full, low, act, params = simulate_pet(_labels(lab), scheme="brainweb", region_sd=0.0)
    ratio = act.array[lab == 2].mean() / act.array[lab == 3].mean()
    assert ratio == pytest.approx(BRAINWEB_UPTAKE[2] / BRAINWEB_UPTAKE[3])
    assert act.array[lab == 7].mean() > 0 and act.array[0, 0, 0] == 0
    with pytest.raises(VoxdiffError, match="BrainWeb"):
        simulate_pet(_labels(np.full((8, 8, 8), 12)), scheme="brainweb")


def test_bad_inputs(tables, tmp_path, monkeypatch):
    lab = _brain().astype(np.float32)
    lab[3, 3, 3] = 0.5
    with pytest.raises(VoxdiffError, match="integer"):
        simulate_pet(_labels(lab), tables_dir=tables)
    with pytest.raises(VoxdiffError, match="scheme"):
        simulate_pet(_labels(_brain()), scheme="spect", tables_dir=tables)
    with pytest.raises(VoxdiffError, match="dose"):
        simulate_pet(_labels(_brain()), dose_fraction=0.0, tables_dir=tables)
    with pytest.raises(VoxdiffError, match="no brain"):
        simulate_pet(_labels(np.zeros((8, 8, 8))), tables_dir=tables)
    monkeypatch.setenv("VOXDIFF_DATA", str(tmp_path / "no-data"))
    with pytest.raises(VoxdiffError, match="MUSE region tables"):
        simulate_pet(Volume(_brain().astype(np.float32), np.eye(4), path=tmp_path / "x.nii.gz"))


# ----------------------------------------------------------------------------- CLI
def _cli(args: list[str]):
    from typer.testing import CliRunner

    import voxdiff.cli  # noqa: F401  (registers every command)
    from voxdiff.cli.app import app

    return CliRunner().invoke(app, args)


def test_cli_simulate_pet_writes_three_files(tables, tmp_path):
    labels = save_volume(_labels(_brain()), tmp_path / "sub1.nii.gz", dtype=np.uint8)
    out = tmp_path / "out"
    res = _cli(["simulate-pet", str(labels), "--out-dir", str(out), "--tables", str(tables), "--seed", "2",
                "--dose", "0.1", "--physics", "image"])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in out.iterdir()) == ["sub1_full.nii.gz", "sub1_low.nii.gz", "sub1_pet.json"]
    params = json.loads((out / "sub1_pet.json").read_text())
    assert params["dose_fraction"] == 0.1 and params["case"] == "sub1"
    assert f"{params['psnr_low_vs_full_db']:.2f} dB" in res.output
    full = load_volume(out / "sub1_full.nii.gz")
    assert full.shape == (16, 16, 16) and np.allclose(full.affine, np.diag([2.0, 2.0, 2.0, 1.0]))


def test_cli_bad_input_writes_nothing(tables, tmp_path):
    lab = _brain().astype(np.float32)
    lab[0, 0, 0] = 0.25
    bad = save_volume(_labels(lab), tmp_path / "bad.nii.gz")
    out = tmp_path / "out"
    res = _cli(["simulate-pet", str(bad), "--out-dir", str(out), "--tables", str(tables)])
    assert res.exit_code != 0 and isinstance(res.exception, VoxdiffError) and "integer" in str(res.exception)
    assert not out.exists()
    res = _cli(["simulate-pet", str(tmp_path / "missing.nii.gz"), "--out-dir", str(out)])
    assert isinstance(res.exception, VoxdiffError) and not out.exists()
    good = save_volume(_labels(_brain()), tmp_path / "good.nii.gz", dtype=np.uint8)
    res = _cli(["simulate-pet", str(good), "--out-dir", str(out), "--scheme", "spect"])
    assert isinstance(res.exception, VoxdiffError) and "scheme" in str(res.exception) and not out.exists()


def test_cli_simulate_pet_dataset(tables, tmp_path):
    labels_dir = tmp_path / "labels"
    labels_dir.mkdir()
    for name in ("c", "a", "b"):
        save_volume(_labels(_brain()), labels_dir / f"{name}.nii.gz", dtype=np.uint8)
    out = tmp_path / "ds"
    res = _cli(["simulate-pet-dataset", "--labels-dir", str(labels_dir), "--out-dir", str(out),
                "--tables", str(tables), "--limit", "2", "--seed", "5", "--physics", "image"])
    assert res.exit_code == 0, res.output
    cases = load_manifest(out / "manifest.csv", roles=["source", "target", "label"])
    assert [c.id for c in cases] == ["a", "b"]
    assert cases[0].paths["source"].name == "a_low.nii.gz" and cases[0].paths["label"].name == "a.nii.gz"
    assert json.loads((out / "dataset.json").read_text())["cases"] == 2
    # The per-subject seed depends on the case id, not on the order: same images as simulate-pet.
    single = tmp_path / "single"
    _cli(["simulate-pet", str(labels_dir / "b.nii.gz"), "--out-dir", str(single), "--tables", str(tables), "--seed", "5",
          "--physics", "image"])
    np.testing.assert_array_equal(load_volume(single / "b_low.nii.gz").array, load_volume(out / "b_low.nii.gz").array)
    a_low = load_volume(out / "a_low.nii.gz").array
    assert not np.array_equal(a_low, load_volume(out / "b_low.nii.gz").array)


# ----------------------------------------------------------------------- real data
@pytest.mark.integration
def test_ixi_subject_psnr(shared_data):
    labels_dir = shared_data / "ixi-t1-2mm" / "labels"
    path = sorted(labels_dir.glob("*.nii.gz"))[0]
    labels = load_volume(path)
    t1 = load_volume(shared_data / "ixi-t1-2mm" / "t1" / path.name)
    start = time.perf_counter()
    full, low, act, params = simulate_pet(labels, head_mask=head_mask_from_image(t1, labels.array > 0), seed=0)
    elapsed = time.perf_counter() - start
    print(f"\n{path.name}: low-dose (5%) PSNR vs full-dose {params['psnr_low_vs_full_db']:.2f} dB "
          f"(data range {params['psnr_data_range']:g}), {elapsed:.1f} s")
    assert 15.0 < params["psnr_low_vs_full_db"] < 35.0
    assert full.shape == labels.shape and np.allclose(full.affine, labels.affine)
    assert params["mean_brain_counts"] == pytest.approx(200.0, rel=1e-6)
    gm = np.isin(labels.array, [142, 143, 190, 191])
    wm = np.isin(labels.array, [81, 82])
    assert 3.0 < act.array[gm].mean() / act.array[wm].mean() < 5.5
