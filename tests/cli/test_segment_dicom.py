"""``segment`` on a DICOM MR series: labels written as DICOM SEG referencing the source series."""

from __future__ import annotations

import numpy as np
import pytest

from tests.helpers import assert_user_error, run_main
from tests.io.dicom_factory import smooth_volume, write_series

highdicom = pytest.importorskip("highdicom")


def test_segment_a_dicom_series_to_dicom_seg(seg_models, tmp_path, capsys):
    aff = np.diag([1.5, 1.5, 2.0, 1.0])
    write_series(tmp_path / "mr", smooth_volume((16, 16, 16), lo=0, hi=800), aff, modality="MR")
    out = tmp_path / "seg.dcm"
    code, _, err = run_main(["segment", "-m", seg_models["preseg"], "-i", tmp_path / "mr", "-o", out,
                             "--output-format", "dicom"], capsys)
    assert code == 0, err
    seg = highdicom.seg.segread(str(out))
    assert seg.Modality == "SEG" and len(seg.SegmentSequence) >= 1
    # The same model written as NIfTI: the SEG's segments are its labels.
    nii = tmp_path / "seg.nii.gz"
    assert run_main(["segment", "-m", seg_models["preseg"], "-i", tmp_path / "mr", "-o", nii], capsys)[0] == 0
    from voxdiff.io import load_volume

    labels = load_volume(nii).array.astype(int)
    assert labels.shape == (16, 16, 16) and labels.max() <= 2
    # 4D probabilities have no DICOM form: refused in one line, nothing written.
    line = assert_user_error(*run_main(["segment", "-m", seg_models["preseg"], "-i", tmp_path / "mr", "-o",
                                        tmp_path / "s2.dcm", "--probs", tmp_path / "p.dcm", "--output-format", "dicom"],
                                       capsys))
    assert "p.dcm" in line and not (tmp_path / "s2.dcm").exists()
