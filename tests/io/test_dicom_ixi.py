"""A real IXI T1 volume as DICOM (written independently and by voxdiff) reads back as its NIfTI."""

from __future__ import annotations

import numpy as np
import pytest

from tests.io.dicom_factory import write_series
from voxdiff.io import load_volume, save_volume


@pytest.mark.integration
def test_ixi_t1_through_dicom_equals_the_nifti(shared_data, tmp_path):
    nii = load_volume(shared_data / "ixi-t1-2mm" / "t1" / "IXI012-HH-1211.nii.gz")
    assert np.linalg.det(nii.affine) < 0  # a sagittal, left-handed grid: the slice order must be kept
    # Written by pydicom alone (slope 1/8: the rescale step), then read by voxdiff.
    _, stored = write_series(tmp_path / "ext", nii.array, nii.affine, modality="MR", slope=0.125)
    ext = load_volume(tmp_path / "ext")
    np.testing.assert_allclose(ext.affine, nii.affine, atol=1e-4)
    np.testing.assert_array_equal(ext.array, stored)
    np.testing.assert_allclose(ext.array, nii.array, atol=0.0625 + 1e-4)
    # Written by voxdiff in the NIfTI's geometry, then read back.
    out = save_volume(nii, tmp_path / "ours", format="dicom", description="IXI T1 copy")
    ours = load_volume(out)
    np.testing.assert_allclose(ours.affine, nii.affine, atol=1e-4)
    step = float(np.ptp(nii.array)) / 65000.0
    np.testing.assert_allclose(ours.array, nii.array, atol=step / 2 + 1e-4)
    # DICOM -> NIfTI again: the same array and affine.
    again = load_volume(save_volume(ours, tmp_path / "again.nii.gz"))
    np.testing.assert_array_equal(again.array, ours.array)
    np.testing.assert_allclose(again.affine, nii.affine, atol=1e-4)
