"""#16's done-when: ``translate`` on a DICOM PET series, SUV in, a DICOM series out in the same geometry."""

from __future__ import annotations

import numpy as np
import pytest

from tests.helpers import assert_user_error, run_main
from tests.io.dicom_factory import pet_tags, smooth_volume, write_series
from voxdiff.io import load_volume

pytest.importorskip("pydicom")


def _pet_series(tmp_path):
    rng = np.random.default_rng(0)
    bqml = rng.poisson(smooth_volume((24, 20, 16), lo=2000, hi=12000)).astype(np.float64)
    aff = np.diag([2.0, 2.0, 2.5, 1.0])
    aff[:3, 3] = [-20.0, 30.0, -10.0]
    write_series(tmp_path / "pet", bqml, aff, modality="PT", pet=pet_tags(), slope=0.5)
    return tmp_path / "pet"


def test_translate_a_dicom_pet_series_to_dicom_and_nifti(tmp_path, capsys):
    pet = _pet_series(tmp_path)
    src = load_volume(pet)
    suv = load_volume(pet, units="suv")
    out = tmp_path / "out_dicom"
    code, _, err = run_main(["translate", "-m", "pretrained:pet-denoise", "-i", pet, "-o", out,
                             "--output-format", "dicom", "--units", "suv", "-k", "2"], capsys)
    assert code == 0, err
    back = load_volume(out)
    assert back.shape == src.shape and np.allclose(back.affine, src.affine, atol=1e-4)
    assert back.meta["modality"] == "PT" and back.meta["series_uid"] != src.meta["series_uid"]
    # Written back in the input's units (Bq/ml), not in SUV: same scale as the input.
    assert 0.5 < back.array.mean() / src.array.mean() < 2.0
    back_suv = load_volume(out, units="suv")
    np.testing.assert_allclose(back_suv.meta["suv_factor"], suv.meta["suv_factor"], rtol=1e-9)
    # The same run to NIfTI gives the same values within the DICOM rescale step.
    nii = tmp_path / "out.nii.gz"
    assert run_main(["translate", "-m", "pretrained:pet-denoise", "-i", pet, "-o", nii, "--units", "suv",
                     "-k", "2"], capsys)[0] == 0
    as_nii = load_volume(nii)
    assert np.allclose(as_nii.affine, src.affine, atol=1e-4)
    slope = max(float(h.RescaleSlope) for h in back.meta["dicom_reference"].headers)
    assert np.abs(as_nii.array - back.array).max() <= 0.5 * slope + 1e-3
    # DICOM output of a folder of cases is refused in one line, before any model runs.
    (tmp_path / "cases").mkdir()
    line = assert_user_error(*run_main(["translate", "-m", "pretrained:pet-denoise", "-i", tmp_path / "cases",
                                        "-o", tmp_path / "dicom"], capsys))
    assert "DICOM" in line or "no volume files" in line
