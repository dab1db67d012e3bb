"""Writing DICOM series: round trips within the rescale step, copied tags, units, atomic folders."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest

from tests.io.dicom_factory import oblique_affine, pet_tags, smooth_volume, write_series
from voxdiff.errors import VoxdiffError
from voxdiff.io import Volume, load_volume, save_volume
from voxdiff.io.dicom import save_dicom_series

AFFINE = np.diag([2.0, 2.0, 3.0, 1.0])


def _headers(folder):
    return [pydicom.dcmread(f, stop_before_pixels=True) for f in sorted(folder.iterdir())]


def _max_half_slope(folder) -> float:
    return max(float(ds.RescaleSlope) for ds in _headers(folder)) / 2 + 1e-6


def test_pet_in_suv_goes_out_in_bqml_and_back(tmp_path):
    _, stored = write_series(tmp_path / "pt", smooth_volume(lo=0, hi=30000), AFFINE, modality="PT",
                             per_slice_rescale=True, pet=pet_tags())
    suv = load_volume(tmp_path / "pt", units="suv")
    out = save_volume(suv.array * 0.5, tmp_path / "out", like=suv, format="dicom", description="ac-pet",
                      model="ppdm-pet-v1")
    src, new = _headers(tmp_path / "pt")[0], _headers(out)
    assert len(new) == 8 and len({ds.SOPInstanceUID for ds in new}) == 8
    first = new[0]
    for kw in ("PatientID", "PatientName", "StudyInstanceUID", "StudyDate", "FrameOfReferenceUID", "SeriesTime",
               "PatientWeight", "Units", "DecayCorrection"):
        assert first.get(kw) == src.get(kw), kw
    assert first.SeriesInstanceUID != src.SeriesInstanceUID and first.Modality == "PT"
    assert list(first.ImageType) == ["DERIVED", "SECONDARY"]
    assert first.SeriesDescription == "voxdiff ac-pet (ppdm-pet-v1)"
    assert first.RadiopharmaceuticalInformationSequence[0].RadionuclideTotalDose == 370e6
    assert {ds.SourceImageSequence[0].ReferencedSOPInstanceUID for ds in new} == \
        set(suv.meta["dicom_reference"].sop_instance_uids)
    assert len({float(ds.RescaleSlope) for ds in new}) > 1  # PET: one slope per slice
    back = load_volume(out)
    assert back.meta["units"] == "BQML"
    np.testing.assert_allclose(back.affine, suv.affine, atol=1e-4)
    np.testing.assert_allclose(back.array, 0.5 * stored, atol=_max_half_slope(out) + 1e-3)
    # The copied times give the same SUV factor again.
    back_suv = load_volume(out, units="suv")
    assert back_suv.meta["suv_factor"] == pytest.approx(suv.meta["suv_factor"], rel=1e-12)


@pytest.mark.parametrize("affine", ["oblique_flipped", "las", "sagittal"])
def test_nifti_to_standalone_dicom_and_back(tmp_path, affine, tiny_affine):
    aff = {"oblique_flipped": oblique_affine(flip_axis=2), "las": tiny_affine,
           "sagittal": np.array([[0, 0, 2, -88], [-2, 0, 0, 118], [0, 2, 0, -135], [0, 0, 0, 1.0]])}[affine]
    arr = smooth_volume(lo=-3.5, hi=7.25).astype(np.float32)
    nii = load_volume(save_volume(arr, tmp_path / "x.nii.gz", affine=aff))
    out = save_volume(nii.array, tmp_path / "dcm", like=nii, format="dicom", description="synthetic CT",
                      modality="CT")
    headers = _headers(out)
    assert {ds.Modality for ds in headers} == {"CT"} and headers[0].PatientID == "VOXDIFF"
    assert len({float(ds.RescaleSlope) for ds in headers}) == 1  # per series outside PET
    back = load_volume(out)
    np.testing.assert_allclose(back.affine, aff, atol=1e-4)
    step = _max_half_slope(out)
    assert step < 1e-4
    np.testing.assert_allclose(back.array, arr, atol=step)
    assert back.orientation == nii.orientation


def test_integer_values_are_exact_and_mr_is_the_default(tmp_path):
    arr = np.rint(smooth_volume(lo=-1024, hi=3000)).astype(np.float32)
    out = save_dicom_series(arr, tmp_path / "v", affine=AFFINE)
    assert _headers(out)[0].Modality == "MR" and float(_headers(out)[0].RescaleSlope) == 1.0
    np.testing.assert_array_equal(load_volume(out).array, arr)
    wide = np.rint(smooth_volume(lo=0, hi=60000)).astype(np.float32)  # beyond int16: shifted by the intercept
    np.testing.assert_array_equal(load_volume(save_dicom_series(wide, tmp_path / "w", affine=AFFINE)).array, wide)


def test_mr_input_keeps_modality_and_study(tmp_path):
    write_series(tmp_path / "mr", smooth_volume(), oblique_affine(), modality="MR", slope=0.05)
    mr = load_volume(tmp_path / "mr")
    out = save_dicom_series(mr.array + 1.0, tmp_path / "out", like=mr, model="m")
    h = _headers(out)[0]
    assert h.Modality == "MR" and h.StudyInstanceUID == mr.meta["dicom_reference"].header.StudyInstanceUID
    assert h.SeriesNumber == 1003
    np.testing.assert_allclose(load_volume(out).array, mr.array + 1.0, atol=_max_half_slope(out))


def test_folder_rules_and_refusals(tmp_path):
    arr = smooth_volume().astype(np.float32)
    out = save_dicom_series(arr, tmp_path / "o", affine=AFFINE)
    with pytest.raises(VoxdiffError, match="not empty"):
        save_dicom_series(arr, out, affine=AFFINE)
    save_dicom_series(arr * 2, out, affine=AFFINE, overwrite=True)
    np.testing.assert_allclose(load_volume(out).array, arr * 2, atol=_max_half_slope(out))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o"], "no temporary folders left"
    (tmp_path / "empty").mkdir()
    save_dicom_series(arr, tmp_path / "empty", affine=AFFINE)
    (tmp_path / "file").write_text("x")
    with pytest.raises(VoxdiffError, match="not a folder"):
        save_dicom_series(arr, tmp_path / "file", affine=AFFINE)
    with pytest.raises(VoxdiffError, match="does not exist"):
        save_dicom_series(arr, tmp_path / "missing" / "o", affine=AFFINE)
    sheared = AFFINE.copy()
    sheared[0, 1] = 0.5
    with pytest.raises(VoxdiffError, match="shears the slice plane"):
        save_dicom_series(arr, tmp_path / "s", affine=sheared)
    bad = arr.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(VoxdiffError, match="NaN"):
        save_dicom_series(bad, tmp_path / "n", affine=AFFINE)
    with pytest.raises(VoxdiffError, match="reference geometry"):
        save_dicom_series(arr[:8], tmp_path / "g", like=Volume(arr, AFFINE))
    assert not (tmp_path / "s").exists() and not (tmp_path / "n").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_write_failure_leaves_nothing(tmp_path, monkeypatch):
    calls = {"n": 0}
    real = pydicom.dcmwrite

    def fail_third(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(28, "No space left on device")
        return real(*args, **kwargs)

    monkeypatch.setattr(pydicom, "dcmwrite", fail_third)
    with pytest.raises(VoxdiffError, match="no space left on device; nothing was written"):
        save_dicom_series(smooth_volume(), tmp_path / "o", affine=AFFINE)
    assert list(tmp_path.iterdir()) == []
