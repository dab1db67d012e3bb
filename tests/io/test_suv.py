"""SUV body-weight from PET DICOM tags: the hand-computed value, decay-correction modes, refusals."""

from __future__ import annotations

import numpy as np
import pytest

from tests.io.dicom_factory import pet_tags, smooth_volume, write_series
from voxdiff.errors import VoxdiffError
from voxdiff.io import load_volume, save_volume
from voxdiff.io.dicom import to_input_units

AFFINE = np.diag([2.0, 2.0, 3.0, 1.0])
# By hand: 370 MBq of F-18 (T1/2 = 6586.2 s) decays for 3600 s to 370e6 * 2^(-3600/6586.2)
# = 370e6 * 0.684633 = 253.314 MBq; SUV factor = 75 000 g / 253.314e6 Bq = 2.96075e-4 g/Bq.
HAND_FACTOR = 2.96075e-4


def _pet(tmp_path, name="pt", **tags):
    arr = smooth_volume(lo=0.0, hi=30000.0)
    _, stored = write_series(tmp_path / name, arr, AFFINE, modality="PT", per_slice_rescale=True,
                             pet=pet_tags(**tags))
    return tmp_path / name, stored


def test_suv_matches_the_hand_computation(tmp_path):
    folder, stored = _pet(tmp_path)
    bq = load_volume(folder)
    suv = load_volume(folder, units="suv")
    assert suv.meta["units"] == "suv" and suv.meta["stored_units"] == "BQML" and bq.meta["units"] == "BQML"
    assert suv.meta["suv_factor"] == pytest.approx(HAND_FACTOR, rel=2e-5)
    assert suv.meta["suv"]["decay_s"] == pytest.approx(3600.0)
    # A voxel of 10 000 Bq/ml is SUV 2.96 here; the brightest one (about 30 000 Bq/ml) about 8.9.
    i = np.unravel_index(np.argmax(stored), stored.shape)
    assert suv.array[i] == pytest.approx(stored[i] * HAND_FACTOR, rel=1e-4)
    np.testing.assert_allclose(suv.array, bq.array * HAND_FACTOR, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(to_input_units(suv.array, like=suv), bq.array, rtol=1e-5, atol=1e-3)
    np.testing.assert_array_equal(to_input_units(bq.array, like=bq), bq.array)
    # The factor survives with_array (outputs go back to Bq/ml) but not a NIfTI round trip.
    assert suv.with_array(suv.array * 2).meta["suv_factor"] == suv.meta["suv_factor"]
    assert load_volume(save_volume(suv, tmp_path / "suv.nii.gz")).meta == {}


def test_start_datetime_admin_and_midnight(tmp_path):
    a = load_volume(_pet(tmp_path, "dt", start_datetime=True)[0], units="suv")
    assert a.meta["suv_factor"] == pytest.approx(HAND_FACTOR, rel=2e-5)
    admin = load_volume(_pet(tmp_path, "admin", decay_correction="ADMIN")[0], units="suv")
    assert admin.meta["suv_factor"] == pytest.approx(75000.0 / 370e6)
    # Injected at 23:50, scanned at 00:40: 50 minutes, not minus 23 hours.
    late = load_volume(_pet(tmp_path, "night", injection="235000", series_time="004000")[0], units="suv")
    assert late.meta["suv"]["decay_s"] == pytest.approx(3000.0)
    assert late.meta["suv_factor"] == pytest.approx(75000.0 / (370e6 * 0.5 ** (3000.0 / 6586.2)))


def test_no_decay_correction_gives_one_factor_per_slice(tmp_path):
    times = [f"11{2 * k:02d}00" for k in range(8)]  # slices acquired 2 min apart from 11:00
    arr = smooth_volume(lo=0.0, hi=30000.0)
    write_series(tmp_path / "none", arr, AFFINE, modality="PT", per_slice_rescale=True,
                 pet=pet_tags(decay_correction="NONE"), acquisition_times=times)
    vol = load_volume(tmp_path / "none", units="suv")
    bq = load_volume(tmp_path / "none")
    factor = np.asarray(vol.meta["suv_factor"])
    expected = 75000.0 / (370e6 * 0.5 ** ((3600.0 + 120.0 * np.arange(8)) / 6586.2))
    np.testing.assert_allclose(factor, expected, rtol=1e-9)
    np.testing.assert_allclose(vol.array, bq.array * expected[None, None, :], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(to_input_units(vol.array, like=vol), bq.array, rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("tags, words", [
    ({"weight_kg": None}, "PatientWeight (0010,1030)"),
    ({"weight_kg": 0.0}, "positive PatientWeight"),
    ({"dose_bq": None}, "RadionuclideTotalDose (0018,1074)"),
    ({"half_life_s": None}, "RadionuclideHalfLife (0018,1075)"),
    ({"injection": None}, "RadiopharmaceuticalStartTime (0018,1072)"),
    ({"units": "CNTS"}, "Units BQML"),
    ({"decay_correction": "WEIRD"}, "DecayCorrection (0054,1102)"),
    ({"injection": "120000", "start_datetime": True}, "injection time"),
])
def test_missing_or_bad_tags_are_named(tmp_path, tags, words):
    folder, _ = _pet(tmp_path, **tags)
    with pytest.raises(VoxdiffError) as err:
        load_volume(folder, units="suv")
    assert words in str(err.value) and str(folder) in str(err.value)
    load_volume(folder)  # as stored it still reads


def test_suv_needs_a_pet_dicom_series(tmp_path):
    write_series(tmp_path / "mr", smooth_volume(), AFFINE, modality="MR")
    with pytest.raises(VoxdiffError, match="needs a PET series .Modality PT.; this series is 'MR'"):
        load_volume(tmp_path / "mr", units="suv")
    nii = save_volume(smooth_volume().astype(np.float32), tmp_path / "pet.nii.gz", affine=AFFINE)
    with pytest.raises(VoxdiffError, match="--units suv needs a DICOM series"):
        load_volume(nii, units="suv")
    with pytest.raises(VoxdiffError, match="unknown units 'sul'"):
        load_volume(tmp_path / "mr", units="sul")
