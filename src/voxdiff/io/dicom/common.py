"""What the DICOM reader and writers share: the pydicom import, tags copied into derived series, series records."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from voxdiff.errors import VoxdiffError


UNITS = ("stored", "suv")

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
_SOP_CLASS = {"CT": "1.2.840.10008.5.1.4.1.1.2", "MR": "1.2.840.10008.5.1.4.1.1.4",
              "PT": "1.2.840.10008.5.1.4.1.1.128"}
_MULTIFRAME_HINT = "enhanced/multi-frame DICOM is not supported; export the series as classic single-frame images"
# Tags of the patient, study and frame of reference copied into every derived series.
_PATIENT_STUDY_TAGS = (
    "PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex", "PatientAge",
    "PatientWeight", "PatientSize", "StudyInstanceUID", "StudyDate", "StudyTime", "StudyID", "AccessionNumber",
    "ReferringPhysicianName", "StudyDescription", "FrameOfReferenceUID", "PositionReferenceIndicator",
    "BodyPartExamined", "PatientPosition",
)
# Acquisition tags that stay true of a derived image of the same modality. For PET they include
# the series/acquisition times, as the decay correction (and so the SUV) refers to them.
_MODALITY_TAGS = {
    "PT": ("Units", "DecayCorrection", "CorrectedImage", "SeriesType", "CountsSource",
           "RadiopharmaceuticalInformationSequence", "SeriesDate", "SeriesTime", "AcquisitionDate",
           "RandomsCorrectionMethod", "AttenuationCorrectionMethod", "ReconstructionMethod",
           "ActualFrameDuration", "FrameReferenceTime"),
    "MR": ("ScanningSequence", "SequenceVariant", "ScanOptions", "MRAcquisitionType", "RepetitionTime",
           "EchoTime", "EchoTrainLength", "InversionTime", "FlipAngle", "MagneticFieldStrength",
           "SequenceName", "AcquisitionDate", "AcquisitionTime"),
    "CT": ("KVP", "ConvolutionKernel", "AcquisitionDate", "AcquisitionTime"),
}


def _pydicom():
    try:
        import pydicom
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise VoxdiffError("reading or writing DICOM needs pydicom: pip install 'voxdiff[dicom]'") from exc
    return pydicom


@dataclass
class DicomSeriesInfo:
    """One series found in a folder (what :func:`list_dicom_series` returns)."""

    uid: str
    modality: str
    description: str
    files: list[Path]
    number: int | None = None

    def summary(self) -> str:
        """``UID (MODALITY, 'description', N slices)`` for error messages and listings."""
        return f"{self.uid} ({self.modality or '?'}, '{self.description}', {len(self.files)} slices)"


@dataclass
class DicomReference:
    """The source series of a volume read from DICOM, kept for writing derived series in its frame.

    ``files`` and ``sop_instance_uids`` follow the volume's third array axis; ``header`` is the
    first slice's dataset without its pixel data (patient, study, equipment, PET tags);
    ``headers`` are all slices' datasets (no pixel data); ``affine`` the geometry as read.
    """

    folder: Path
    series_uid: str
    modality: str
    sop_class_uid: str
    files: list[Path]
    sop_instance_uids: list[str]
    header: Any = field(repr=False)
    headers: list[Any] = field(repr=False)
    affine: np.ndarray = field(repr=False)


