"""Reading DICOM series: geometry (against SimpleITK and the NIfTI path), rescale, series choice, refusals."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pydicom
import pytest

from tests.io.dicom_factory import oblique_affine, smooth_volume, write_series
from voxdiff.errors import VoxdiffError
from voxdiff.io import load_volume, save_volume
from voxdiff.io.dicom import is_dicom_folder, list_dicom_series

sitk = pytest.importorskip("SimpleITK")


def _canonical(array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    img = nib.as_closest_canonical(nib.Nifti1Image(np.asarray(array, np.float32), affine))
    return np.asarray(img.dataobj), img.affine


def _sitk_volume(folder) -> tuple[np.ndarray, np.ndarray]:
    """SimpleITK's (GDCM's) reading of a series, turned into our (X, Y, Z) array + RAS affine."""
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    img = reader.Execute()
    lps = np.eye(4)
    lps[:3, :3] = np.array(img.GetDirection()).reshape(3, 3) @ np.diag(img.GetSpacing())
    lps[:3, 3] = img.GetOrigin()
    return sitk.GetArrayFromImage(img).T, np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps


@pytest.mark.parametrize("flip_axis", [None, 0, 1, 2])
def test_oblique_series_reads_with_the_affine_it_was_written_with(tmp_path, flip_axis):
    aff = oblique_affine(flip_axis=flip_axis)
    arr = smooth_volume()
    _, stored = write_series(tmp_path / "mr", arr, aff, modality="MR", slope=0.05)
    vol = load_volume(tmp_path / "mr")
    assert vol.shape == arr.shape
    np.testing.assert_allclose(vol.affine, aff, atol=1e-4)
    np.testing.assert_allclose(vol.array, stored, atol=1e-4)
    assert vol.meta["format"] == "dicom" and vol.meta["modality"] == "MR"
    # DICOM -> NIfTI keeps array and geometry.
    back = load_volume(save_volume(vol, tmp_path / "mr.nii.gz"))
    np.testing.assert_array_equal(back.array, vol.array)
    np.testing.assert_allclose(back.affine, vol.affine, atol=1e-5)
    assert back.orientation == "".join(nib.aff2axcodes(aff)) == vol.orientation


@pytest.mark.parametrize("flip_axis", [None, 1, 2])
def test_geometry_agrees_with_simpleitk(tmp_path, flip_axis):
    # Shuffled InstanceNumbers: the order comes from the positions alone, as in GDCM.
    aff = oblique_affine(spacing=(0.8, 1.1, 3.0), angles_deg=(-25.0, 15.0, 35.0), flip_axis=flip_axis)
    _, stored = write_series(tmp_path / "s", smooth_volume((12, 10, 6)), aff, per_slice_rescale=True,
                             numbering="shuffled", seed=3)
    vol = load_volume(tmp_path / "s")
    ref_arr, ref_aff = _sitk_volume(tmp_path / "s")
    np.testing.assert_allclose(vol.affine, ref_aff, atol=1e-4)
    np.testing.assert_allclose(vol.array, ref_arr, rtol=1e-5, atol=1e-3)
    # Same physical image as written, whichever way the slices run.
    a, b = _canonical(vol.array, vol.affine), _canonical(stored, aff)
    np.testing.assert_allclose(a[1], b[1], atol=1e-4)
    np.testing.assert_allclose(a[0], b[0], atol=1e-3)


def test_per_slice_rescale_is_applied(tmp_path):
    arr = smooth_volume(lo=0.0, hi=20000.0)
    arr[:, :, 3] *= 0.01  # one faint slice gets a much finer slope
    files, stored = write_series(tmp_path / "pt", arr, np.diag([2.0, 2.0, 3.0, 1.0]), modality="PT",
                                 per_slice_rescale=True)
    slopes = {float(pydicom.dcmread(f, stop_before_pixels=True).RescaleSlope) for f in files}
    assert len(slopes) == len(files)
    vol = load_volume(tmp_path / "pt")
    np.testing.assert_allclose(vol.array, stored, rtol=1e-6, atol=1e-4)
    np.testing.assert_allclose(vol.array, arr, atol=max(slopes))
    assert vol.disk_dtype == np.float32 and vol.meta["units"] == "BQML"


def test_integer_ct_keeps_an_integer_disk_dtype(tmp_path):
    arr = np.rint(smooth_volume(lo=-1000, hi=1500))
    write_series(tmp_path / "ct", arr, np.eye(4), modality="CT", slope=1.0, intercept=-1024.0)
    vol = load_volume(tmp_path / "ct")
    np.testing.assert_array_equal(vol.array, arr)
    assert vol.disk_dtype == np.int16 and vol.meta["units"] == "HU"


def test_a_file_of_the_series_loads_the_whole_series(tmp_path):
    files, stored = write_series(tmp_path / "s", smooth_volume(), np.eye(4))
    write_series(tmp_path / "s", smooth_volume(seed=1), np.eye(4), description="other", seed=1)
    vol = load_volume(files[0])
    np.testing.assert_allclose(vol.array, stored, atol=1e-4)
    assert is_dicom_folder(tmp_path / "s") and not is_dicom_folder(files[0])


def test_several_series_are_listed_and_chosen_by_uid(tmp_path):
    write_series(tmp_path / "d", smooth_volume(), np.eye(4), series_uid="1.2.3.4", description="T1 MPRAGE")
    _, stored = write_series(tmp_path / "d", smooth_volume((16, 16, 5), seed=2), np.eye(4), modality="CT",
                             series_uid="1.2.3.5", description="low dose", seed=2)
    with pytest.raises(VoxdiffError) as err:
        load_volume(tmp_path / "d")
    msg = str(err.value)
    assert "2 DICOM series" in msg and "--series-uid" in msg and "\n" not in msg
    for word in ("1.2.3.4 (MR, 'T1 MPRAGE', 8 slices)", "1.2.3.5 (CT, 'low dose', 5 slices)"):
        assert word in msg
    vol = load_volume(tmp_path / "d", series_uid="1.2.3.5")
    assert vol.shape == (16, 16, 5) and vol.meta["series_uid"] == "1.2.3.5"
    np.testing.assert_allclose(vol.array, stored, atol=1e-4)
    with pytest.raises(VoxdiffError, match="no series with SeriesInstanceUID 9.9"):
        load_volume(tmp_path / "d", series_uid="9.9")
    assert [s.uid for s in list_dicom_series(tmp_path / "d")] == ["1.2.3.4", "1.2.3.5"]


def test_refuses_missing_slices_stacked_volumes_and_non_dicom_folders(tmp_path):
    aff = np.diag([1.0, 1.0, 2.0, 1.0])
    files, _ = write_series(tmp_path / "gap", smooth_volume(), aff)
    mid = sorted(files, key=lambda f: float(pydicom.dcmread(f).ImagePositionPatient[2]))[4]
    mid.unlink()
    with pytest.raises(VoxdiffError, match="irregular slice positions"):
        load_volume(tmp_path / "gap")
    pos = [[0.0, 0.0, 2.0 * (k // 2)] for k in range(8)]  # two volumes in one series
    write_series(tmp_path / "4d", smooth_volume(), aff, positions=pos)
    with pytest.raises(VoxdiffError, match="share a slice position"):
        load_volume(tmp_path / "4d")
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "notes.txt").write_text("hello\n")
    with pytest.raises(VoxdiffError, match="without DICOM files"):
        load_volume(tmp_path / "plain")


def test_refuses_multiframe_and_missing_geometry(tmp_path):
    files, _ = write_series(tmp_path / "mf", smooth_volume(), np.eye(4))
    ds = pydicom.dcmread(files[0])
    ds.NumberOfFrames = 2
    ds.save_as(files[0])
    with pytest.raises(VoxdiffError, match="multi-frame DICOM is not supported"):
        load_volume(tmp_path / "mf")
    files, _ = write_series(tmp_path / "sc", smooth_volume(), np.eye(4))
    ds = pydicom.dcmread(files[2])
    del ds.ImagePositionPatient
    ds.save_as(files[2])
    with pytest.raises(VoxdiffError, match=f"{files[2].name}: missing or malformed ImagePositionPatient"):
        load_volume(tmp_path / "sc")


def test_voxel_limit_applies_before_decoding(tmp_path, monkeypatch):
    write_series(tmp_path / "s", smooth_volume(), np.eye(4))
    monkeypatch.setenv("VOXDIFF_MAX_VOXELS", "1000")  # the series has 16 x 16 x 8 = 2048
    with pytest.raises(VoxdiffError, match=str(tmp_path / "s")):
        load_volume(tmp_path / "s")
