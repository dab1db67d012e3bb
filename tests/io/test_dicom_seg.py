"""DICOM SEG output via highdicom: masks read back equal the labels; refusals without a DICOM input."""

from __future__ import annotations

import numpy as np
import pytest

from tests.io.dicom_factory import oblique_affine, smooth_volume, write_series
from voxdiff.errors import VoxdiffError
from voxdiff.io import load_volume, save_volume
from voxdiff.io.dicom import save_dicom_seg

hd = pytest.importorskip("highdicom")


@pytest.fixture
def mr(tmp_path):
    write_series(tmp_path / "mr", smooth_volume((16, 12, 6)), oblique_affine(flip_axis=1), modality="MR",
                 slope=0.05)
    vol = load_volume(tmp_path / "mr")
    labels = np.zeros(vol.shape, np.int16)
    labels[vol.array > 300] = 1
    labels[vol.array > 700] = 3  # label 2 is absent: its segment is empty
    return vol, labels


def test_seg_masks_read_back_equal_the_labels(tmp_path, mr):
    vol, labels = mr
    path = save_dicom_seg(labels, tmp_path / "seg.dcm", like=vol, class_names=["brain", "lesion", "core"],
                          model="pdddpm-v1")
    seg = hd.seg.segread(path)
    assert [seg.get_segment_description(i).segment_label for i in (1, 2, 3)] == ["brain", "lesion", "core"]
    ref = vol.meta["dicom_reference"]
    assert seg.StudyInstanceUID == ref.header.StudyInstanceUID and seg.FrameOfReferenceUID == \
        ref.header.FrameOfReferenceUID
    px = seg.get_pixels_by_source_instance(source_sop_instance_uids=ref.sop_instance_uids, segment_numbers=[1, 2, 3])
    masks = np.transpose(px, (2, 1, 0, 3)).astype(bool)  # (frames, rows, cols) -> our (x, y, z)
    for k, value in enumerate((1, 2, 3)):
        np.testing.assert_array_equal(masks[..., k], labels == value)
    assert labels.max() == 3 and (labels == 1).any() and (labels == 3).any()


def test_seg_into_a_folder_with_a_mapping(tmp_path, mr):
    vol, labels = mr
    path = save_dicom_seg(labels, tmp_path / "segdir", like=vol, class_names={1: "wm", 3: "gm"})
    assert path == tmp_path / "segdir" / "SEG.dcm"
    seg = hd.seg.segread(path)
    assert seg.number_of_segments == 2 and seg.get_segment_description(2).segment_label == "gm"
    with pytest.raises(VoxdiffError, match="not empty"):
        save_dicom_seg(labels, tmp_path / "segdir", like=vol, class_names={1: "wm", 3: "gm"})


def test_seg_refusals(tmp_path, mr):
    vol, labels = mr
    nii = load_volume(save_volume(vol, tmp_path / "x.nii.gz"))
    with pytest.raises(VoxdiffError) as err:
        save_dicom_seg(labels, tmp_path / "a.dcm", like=nii, class_names=["a", "b", "c"])
    assert "needs a DICOM input series" in str(err.value) and "x.nii.gz" in str(err.value)
    with pytest.raises(VoxdiffError, match=r"label value\(s\) \[3\] have no class name"):
        save_dicom_seg(labels, tmp_path / "b.dcm", like=vol, class_names=["a", "b"])
    with pytest.raises(VoxdiffError, match="input series' grid"):
        save_dicom_seg(labels[:, :, :4], tmp_path / "c.dcm", like=vol, class_names=["a", "b", "c"])
    assert not list(tmp_path.glob("*.dcm")) and not list(tmp_path.glob(".*"))
