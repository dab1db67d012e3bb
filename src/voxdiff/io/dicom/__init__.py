"""DICOM series in and out: image series (CT, MR, PET with SUV) and DICOM SEG segmentations.

Reading (:func:`read_dicom_series`, reached through :func:`voxdiff.io.load_volume` with a folder)
uses pydicom: one classic single-frame series, Rescale Slope/Intercept applied per slice, the
geometry from ImagePositionPatient / ImageOrientationPatient / PixelSpacing, turned from DICOM's
LPS into the RAS+ affine that nibabel and the NIfTI reader use. Array axes are (column, row,
slice) as SimpleITK gives them; slices are sorted along the normal (row x column direction, as
GDCM does) unless the InstanceNumbers run the other way, in which case the series' own order
is kept (so a series voxdiff wrote is read back in the order it was written).

Writing (:func:`save_dicom_series`, :func:`save_dicom_seg`) makes a derived series in the
reference series' geometry, patient and study, or a standalone series from an affine alone.
"""

from __future__ import annotations

from voxdiff.io.dicom.common import DicomReference, DicomSeriesInfo, UNITS
from voxdiff.io.dicom.read import is_dicom_file, is_dicom_folder, file_series_uid, list_dicom_series, read_dicom_series
from voxdiff.io.dicom.suv import suv_bw_factor, to_input_units
from voxdiff.io.dicom.write import save_dicom_series
from voxdiff.io.dicom.seg import save_dicom_seg

__all__ = [
    "DicomReference",
    "DicomSeriesInfo",
    "is_dicom_file",
    "is_dicom_folder",
    "file_series_uid",
    "list_dicom_series",
    "read_dicom_series",
    "suv_bw_factor",
    "to_input_units",
    "save_dicom_series",
    "save_dicom_seg",
    "UNITS",
]
