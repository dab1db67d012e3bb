"""Writing a derived DICOM series in a reference series' geometry, patient and study (or standalone)."""

from __future__ import annotations

import contextlib
import datetime
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from voxdiff.errors import VoxdiffError
from voxdiff.io.atomic import write_error
from voxdiff.io.dicom.common import DicomReference, _LPS_TO_RAS, _MODALITY_TAGS, _PATIENT_STUDY_TAGS, _SOP_CLASS, _pydicom
from voxdiff.io.dicom.suv import to_input_units


@contextlib.contextmanager
def _atomic_folder(folder: Path, overwrite: bool) -> Iterator[Path]:
    """Yield a hidden temporary folder beside ``folder``; on success it replaces ``folder``.

    An existing non-empty ``folder`` is refused unless ``overwrite``; it is then moved aside
    and removed only once the new one is in place.
    """
    parent = folder.parent if str(folder.parent) else Path(".")
    if not parent.is_dir():
        raise VoxdiffError(f"{folder}: output folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise VoxdiffError(f"{folder}: output folder {parent} is not writable")
    if folder.exists() and not folder.is_dir():
        raise VoxdiffError(f"{folder}: exists and is not a folder (a DICOM series is written as a folder)")
    if folder.is_dir() and any(folder.iterdir()) and not overwrite:
        raise VoxdiffError(f"{folder}: the output folder is not empty; choose a new folder or allow overwriting")
    tmp = None
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=parent))
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())
        old = None
        if folder.is_dir() and any(folder.iterdir()):
            old = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".old", dir=parent))
            os.replace(folder, old)
        os.replace(tmp, folder)  # onto a missing or empty folder
        tmp = None
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except OSError as exc:
        raise write_error(folder, exc) from exc
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _ds(value: float) -> str:
    from pydicom.valuerep import format_number_as_ds

    return format_number_as_ds(float(value))


def _quantise(values: np.ndarray) -> tuple[np.ndarray, str, str]:
    """int16 pixels + Rescale Slope/Intercept (as DS strings) that restore ``values`` to slope/2."""
    lo, hi = float(values.min()), float(values.max())
    if np.all(values == np.rint(values)) and hi - lo <= 65535:
        inter = 0.0 if lo >= -32768 and hi <= 32767 else float(np.floor(lo)) + 32768.0
        slope_s, inter_s = "1", _ds(inter)
    elif hi == lo:
        slope_s, inter_s = "1", _ds(lo)
    else:
        # 65000 steps rather than 65535 leave room for the DS rounding of slope and intercept.
        slope_s, inter_s = _ds((hi - lo) / 65000.0), _ds((hi + lo) / 2.0)
    slope, inter = float(slope_s), float(inter_s)
    stored = np.clip(np.rint((values.astype(np.float64) - inter) / slope), -32768, 32767).astype("<i2")
    return stored, slope_s, inter_s


def _geometry(affine: np.ndarray, what: Path) -> tuple[np.ndarray, list[str], list[str], np.ndarray]:
    """LPS origin, ImageOrientationPatient, PixelSpacing and slice step of a RAS affine."""
    lps = _LPS_TO_RAS @ np.asarray(affine, dtype=np.float64)
    c0, c1, step = lps[:3, 0], lps[:3, 1], lps[:3, 2]
    s0, s1 = np.linalg.norm(c0), np.linalg.norm(c1)
    if min(s0, s1, np.linalg.norm(step)) == 0:
        raise VoxdiffError(f"{what}: the affine has a zero voxel size; cannot write DICOM geometry")
    if abs(float(c0 @ c1)) / (s0 * s1) > 1e-4:
        raise VoxdiffError(f"{what}: the affine shears the slice plane (rows and columns not perpendicular), "
                           "which DICOM cannot represent; resample the volume first")
    iop = [_ds(v) for v in np.concatenate([c0 / s0, c1 / s1])]
    return lps[:3, 3], iop, [_ds(s1), _ds(s0)], step


def _now() -> tuple[str, str]:
    now = datetime.datetime.now()
    return now.strftime("%Y%m%d"), now.strftime("%H%M%S.%f")


def _base_dataset(sop_class: str, sop_uid: str):
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, sop_uid
    return ds


def _series_description(description: str | None, model: str | None) -> str:
    text = "voxdiff" + (f" {description}" if description else "") + (f" ({model})" if model else "")
    return text[:64]  # LO


def save_dicom_series(
    array: np.ndarray,
    folder: str | Path,
    *,
    like: Any = None,
    affine: np.ndarray | None = None,
    modality: str | None = None,
    description: str | None = None,
    model: str | None = None,
    units: str | None = None,
    overwrite: bool = False,
    series_number: int | None = None,
) -> Path:
    """Write ``array`` (X, Y, Z) as a derived DICOM series into the new folder ``folder`` (atomically).

    With ``like`` read from DICOM the series joins the reference's patient, study and frame of
    reference (tags copied), has the input's modality and is stored in the input's units (SUV
    back to Bq/ml). Without a DICOM reference it is a standalone series (new patient/study
    UIDs) in the geometry of ``like.affine`` or ``affine``, ``modality`` defaulting to "MR".
    Pixels are int16 with Rescale Slope/Intercept per slice for PET, per series otherwise
    (values are restored to half a slope). ``units`` is the PET Units tag of a standalone series
    (default BQML). Files are ``IM00001.dcm`` ... in slice order; ImageType is DERIVED\\SECONDARY
    and the SeriesDescription names voxdiff, ``description`` and ``model``. A non-empty existing
    folder is refused unless ``overwrite``.
    """
    pydicom = _pydicom()
    from pydicom.dataset import Dataset
    from pydicom.uid import generate_uid

    import voxdiff

    folder = Path(folder)
    meta = getattr(like, "meta", None) or {}
    ref: DicomReference | None = meta.get("dicom_reference")
    if like is not None:
        affine = like.affine
        if tuple(np.shape(array)[:3]) != tuple(like.array.shape[:3]):
            raise VoxdiffError(f"{folder}: output shape {np.shape(array)} differs from the reference geometry "
                               f"{like.array.shape}")
    if affine is None:
        raise ValueError("save_dicom_series needs like= or affine=")
    array = np.asarray(array)
    if array.ndim != 3:
        raise VoxdiffError(f"{folder}: DICOM series are written from 3D arrays, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise VoxdiffError(f"{folder}: the output holds NaN/Inf values, which DICOM pixels cannot store")
    modality = (modality or (ref.modality if ref is not None else None) or "MR").upper()
    if modality not in _SOP_CLASS:
        raise VoxdiffError(f"{folder}: DICOM output supports the modalities {', '.join(_SOP_CLASS)}, "
                           f"not '{modality}'")
    values = to_input_units(array, like) if like is not None else array.astype(np.float64)
    origin, iop, pixel_spacing, step = _geometry(affine, folder)
    nx, ny, nz = values.shape
    same_modality = ref is not None and ref.modality == modality
    # Source slices are referenced only when the output lies on the input's very slices.
    same_slices = (ref is not None and len(ref.files) == nz and np.allclose(ref.affine, affine, atol=1e-4))
    date, time = _now()
    series_uid = generate_uid()
    study_uid, frame_uid = generate_uid(), generate_uid()
    number = series_number if series_number is not None else (
        1000 + int(ref.header.get("SeriesNumber") or 0) if ref is not None else 1000)
    per_slice = modality == "PT"
    quant = [_quantise(values[:, :, k]) for k in range(nz)] if per_slice else None
    if not per_slice:
        stored_all, slope_s, inter_s = _quantise(values)
    thick = float(np.linalg.norm(step))
    lo, hi = np.percentile(values, [1, 99.5]) if values.size else (0.0, 1.0)
    with _atomic_folder(folder, overwrite) as tmp:
        for k in range(nz):
            sop_uid = generate_uid()
            ds = _base_dataset(_SOP_CLASS[modality], sop_uid)
            if ref is not None:
                for kw in _PATIENT_STUDY_TAGS + (_MODALITY_TAGS[modality] if same_modality else ()):
                    if kw in ref.header:
                        setattr(ds, kw, ref.header.data_element(kw).value)
                if same_modality and same_slices:
                    for kw in ("AcquisitionTime", "AcquisitionDate", "DecayFactor"):
                        if kw in ref.headers[k]:
                            setattr(ds, kw, ref.headers[k].data_element(kw).value)
            else:
                ds.PatientName, ds.PatientID = "VOXDIFF^ANONYMOUS", "VOXDIFF"
                ds.PatientBirthDate = ds.PatientSex = ds.ReferringPhysicianName = ds.AccessionNumber = ""
                ds.StudyInstanceUID, ds.FrameOfReferenceUID = study_uid, frame_uid
                ds.StudyDate, ds.StudyTime, ds.StudyID = date, time, "1"
                ds.PositionReferenceIndicator = ""
            ds.Modality = modality
            ds.SeriesInstanceUID = series_uid
            ds.SeriesNumber = number
            ds.InstanceNumber = k + 1
            ds.SeriesDescription = _series_description(description, model)
            ds.ImageType = ["DERIVED", "SECONDARY"]
            ds.DerivationDescription = _series_description(description, model)
            ds.Manufacturer = "voxdiff"
            ds.ManufacturerModelName = (model or "voxdiff")[:64]
            ds.SoftwareVersions = f"voxdiff {voxdiff.__version__}"
            ds.ContentDate, ds.ContentTime = date, time
            ds.InstanceCreationDate, ds.InstanceCreationTime = date, time
            if "SeriesDate" not in ds:
                ds.SeriesDate, ds.SeriesTime = date, time
            if same_slices:
                src = Dataset()
                src.ReferencedSOPClassUID = ref.sop_class_uid
                src.ReferencedSOPInstanceUID = ref.sop_instance_uids[k]
                ds.SourceImageSequence = [src]
            ds.ImagePositionPatient = [_ds(v) for v in origin + k * step]
            ds.ImageOrientationPatient = iop
            ds.PixelSpacing = pixel_spacing
            ds.SliceThickness = _ds(thick)
            ds.Rows, ds.Columns = ny, nx
            ds.SamplesPerPixel = 1
            ds.PhotometricInterpretation = "MONOCHROME2"
            ds.BitsAllocated = ds.BitsStored = 16
            ds.HighBit = 15
            ds.PixelRepresentation = 1
            stored, s, b = quant[k] if per_slice else (stored_all[:, :, k], slope_s, inter_s)
            ds.RescaleSlope, ds.RescaleIntercept = s, b
            ds.RescaleType = "HU" if modality == "CT" else "US"  # PET: its Units, set below
            ds.WindowCenter, ds.WindowWidth = _ds((lo + hi) / 2), _ds(max(hi - lo, 1e-6))
            if modality == "PT":
                _pet_defaults(ds, units, k, nz)
            elif modality == "MR" and not same_modality:
                ds.ScanningSequence, ds.SequenceVariant, ds.ScanOptions = "RM", "NONE", ""
                ds.MRAcquisitionType = "3D"
                ds.RepetitionTime = ds.EchoTime = ds.EchoTrainLength = None
            elif modality == "CT" and not same_modality:
                ds.KVP = None
                ds.AcquisitionNumber = None
            ds.PixelData = np.ascontiguousarray(stored.T).tobytes()
            pydicom.dcmwrite(tmp / f"IM{k + 1:05d}.dcm", ds, enforce_file_format=True)
    return folder


def _pet_defaults(ds: Any, units: str | None, k: int, nz: int) -> None:
    """The PET Image module's required tags a standalone (or cross-modality) series lacks."""
    if "Units" not in ds:
        ds.Units = units or "BQML"
    for kw, value in (("DecayCorrection", "NONE"), ("CorrectedImage", ""), ("SeriesType", ["STATIC", "IMAGE"]),
                      ("CountsSource", "EMISSION"), ("FrameReferenceTime", "0"), ("ActualFrameDuration", 0),
                      ("AcquisitionDate", ds.SeriesDate), ("AcquisitionTime", ds.SeriesTime)):
        if kw not in ds:
            setattr(ds, kw, value)
    if "RadiopharmaceuticalInformationSequence" not in ds:
        ds.RadiopharmaceuticalInformationSequence = []
    ds.ImageIndex, ds.NumberOfSlices = k + 1, nz
    ds.RescaleType = str(ds.Units)


