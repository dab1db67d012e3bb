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

import contextlib
import datetime
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from voxdiff.errors import VoxdiffError
from voxdiff.io.atomic import atomic_path, write_error

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

#: Values accepted for ``units`` when reading: as stored (after rescale), or SUV body-weight.
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


def is_dicom_file(path: str | Path) -> bool:
    """True when ``path`` is a file with the DICOM Part 10 preamble ("DICM" at byte 128)."""
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def _candidate_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")
                  and p.name.upper() != "DICOMDIR")


def file_series_uid(path: str | Path) -> str:
    """The SeriesInstanceUID of one DICOM file (a file given for its whole series)."""
    pydicom = _pydicom()
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SeriesInstanceUID"])
    except Exception as exc:
        raise VoxdiffError(f"{path}: not a readable DICOM file ({' '.join(str(exc).split())})") from exc
    return str(ds.get("SeriesInstanceUID", "") or "")


def is_dicom_folder(path: str | Path) -> bool:
    """True when ``path`` is a folder holding at least one DICOM file (not searched recursively)."""
    path = Path(path)
    return path.is_dir() and any(is_dicom_file(p) for p in _candidate_files(path))


def list_dicom_series(folder: str | Path) -> list[DicomSeriesInfo]:
    """The DICOM image series directly in ``folder`` (non-DICOM files are ignored), largest first."""
    pydicom = _pydicom()
    folder = Path(folder)
    groups: dict[str, DicomSeriesInfo] = {}
    for path in _candidate_files(folder):
        if not is_dicom_file(path):
            continue
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True,
                                 specific_tags=["SeriesInstanceUID", "Modality", "SeriesDescription", "SeriesNumber"])
        except Exception as exc:  # pydicom raises many types on damaged files
            raise VoxdiffError(f"{path}: not a readable DICOM file ({' '.join(str(exc).split())})") from exc
        uid = str(ds.get("SeriesInstanceUID", "") or "")
        info = groups.get(uid)
        if info is None:
            number = ds.get("SeriesNumber")
            info = groups[uid] = DicomSeriesInfo(uid, str(ds.get("Modality", "") or ""),
                                                 str(ds.get("SeriesDescription", "") or ""), [],
                                                 int(number) if number not in (None, "") else None)
        info.files.append(path)
    return sorted(groups.values(), key=lambda s: (-len(s.files), s.uid))


def _choose_series(folder: Path, series_uid: str | None, what: str) -> DicomSeriesInfo:
    series = list_dicom_series(folder)
    if not series:
        raise VoxdiffError(f"{what}: a folder without DICOM files; expected a volume file or a DICOM series folder")
    if series_uid is not None:
        for s in series:
            if s.uid == series_uid:
                return s
        raise VoxdiffError(f"{what}: no series with SeriesInstanceUID {series_uid}; the folder holds "
                           + "; ".join(s.summary() for s in series))
    if len(series) > 1:
        raise VoxdiffError(f"{what}: holds {len(series)} DICOM series, choose one by SeriesInstanceUID "
                           "(--series-uid): " + "; ".join(s.summary() for s in series))
    return series[0]


def _floats(ds: Any, keyword: str, n: int, path: Path) -> np.ndarray:
    value = ds.get(keyword)
    try:
        out = np.array([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        out = np.zeros(0)
    if out.size != n:
        raise VoxdiffError(f"{path}: missing or malformed {keyword}; not a 3D image slice (localizer, "
                           "screenshot or report?)")
    return out


def _pixels(ds: Any, path: Path) -> np.ndarray:
    """The stored pixel values of one slice, transposed to (column, row)."""
    try:
        arr = ds.pixel_array
    except Exception as exc:  # decoders raise various types
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        name = getattr(syntax, "name", syntax)
        raise VoxdiffError(f"{path}: could not decode the pixel data ({name}): for compressed DICOM "
                           "install the decoders, pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg "
                           f"({' '.join(str(exc).split())})") from exc
    if arr.ndim != 2:
        raise VoxdiffError(f"{path}: pixel data of shape {arr.shape}, expected one grey-level slice "
                           "(colour and multi-frame images are not supported)")
    return arr.T


def _disk_dtype(values: list[np.ndarray], slopes: np.ndarray, intercepts: np.ndarray) -> np.dtype:
    """The dtype that holds the rescaled values exactly (float32 when a slope is not 1)."""
    if np.all(slopes == 1.0) and np.all(intercepts == np.rint(intercepts)):
        lo = min(float(v.min()) for v in values)
        hi = max(float(v.max()) for v in values)
        for dt in (np.uint8, np.int16, np.uint16, np.int32):
            if np.iinfo(dt).min <= lo and hi <= np.iinfo(dt).max:
                return np.dtype(dt)
    return np.dtype(np.float32)


def read_dicom_series(folder: str | Path, *, series_uid: str | None = None, units: str | None = None,
                      role: str | None = None):
    """Read one classic DICOM image series from ``folder`` as a :class:`voxdiff.io.Volume`.

    ``series_uid`` picks a series when the folder holds several (otherwise that is refused
    with a list of the series). ``units="suv"`` converts a PET series in Bq/ml to SUV
    body-weight (see :func:`suv_bw_factor`). The volume's ``meta`` holds ``format`` ("dicom"),
    ``modality``, ``units`` (of the array: "suv", or the stored units: the PET Units tag,
    "HU" for CT, None for MR), ``stored_units``, ``series_uid``, ``series_description``,
    ``dicom_reference`` (a :class:`DicomReference`) and, with SUV, ``suv_factor`` (float, or one
    value per slice of axis 2) and ``suv`` (the tags and times used).
    """
    from voxdiff.io import Volume

    pydicom = _pydicom()
    folder = Path(folder)
    what = f"{folder} ({role})" if role else str(folder)
    if units not in (None, *UNITS):
        raise VoxdiffError(f"{what}: unknown units '{units}' (use one of: {', '.join(UNITS)})")
    series = _choose_series(folder, series_uid, what)
    headers, pixels, positions = [], [], []
    for path in series.files:
        try:
            ds = pydicom.dcmread(path)
        except Exception as exc:
            raise VoxdiffError(f"{path}: not a readable DICOM file ({' '.join(str(exc).split())})") from exc
        if int(ds.get("NumberOfFrames", 1) or 1) > 1:
            raise VoxdiffError(f"{path}: {_MULTIFRAME_HINT}")
        if not headers:  # the series' size is checked before its pixels are decoded
            from voxdiff.io.limits import check_voxel_count

            check_voxel_count((int(ds.get("Columns", 0) or 0), int(ds.get("Rows", 0) or 0), len(series.files)), what)
        if "PixelData" not in ds:
            raise VoxdiffError(f"{path}: a DICOM file without pixel data in series {series.uid}")
        pixels.append(_pixels(ds, path))
        positions.append(_floats(ds, "ImagePositionPatient", 3, path))
        del ds.PixelData  # the headers are kept on the volume; the pixels are not needed twice
        headers.append(ds)
    first = headers[0]
    iop = _floats(first, "ImageOrientationPatient", 6, series.files[0])
    spacing = _floats(first, "PixelSpacing", 2, series.files[0])
    for ds, path, px in zip(headers, series.files, pixels):
        if px.shape != pixels[0].shape:
            raise VoxdiffError(f"{path}: slice of {px.shape[1]}x{px.shape[0]} pixels in a series of "
                               f"{pixels[0].shape[1]}x{pixels[0].shape[0]} (series {series.uid})")
        if not np.allclose(_floats(ds, "ImageOrientationPatient", 6, path), iop, atol=1e-4):
            raise VoxdiffError(f"{path}: orientation differs from the series' first slice (a localizer or a "
                               "mixed series?); choose one series by SeriesInstanceUID")
        if not np.allclose(_floats(ds, "PixelSpacing", 2, path), spacing, atol=1e-4):
            raise VoxdiffError(f"{path}: PixelSpacing differs from the series' first slice")
    row_dir, col_dir = iop[:3], iop[3:]
    normal = np.cross(row_dir, col_dir)
    pos = np.array(positions)
    order = np.argsort(pos @ normal, kind="stable")
    numbers = [ds.get("InstanceNumber") for ds in headers]
    if all(n not in (None, "") for n in numbers) and len(order) > 1:
        num = np.array([int(numbers[i]) for i in order])
        if np.all(np.diff(num) < 0):
            order = order[::-1]
    headers = [headers[i] for i in order]
    pixels = [pixels[i] for i in order]
    files = [series.files[i] for i in order]
    pos = pos[order]
    affine = _series_affine(pos, row_dir, col_dir, spacing, headers[0], files, what)
    slopes = np.array([float(ds.get("RescaleSlope", 1) or 1) for ds in headers])
    intercepts = np.array([float(ds.get("RescaleIntercept", 0) or 0) for ds in headers])
    disk_dtype = _disk_dtype(pixels, slopes, intercepts)
    data = np.stack([px.astype(np.float64) * s + b for px, s, b in zip(pixels, slopes, intercepts)], axis=-1)
    modality = str(first.get("Modality", "") or "")
    if modality == "PT":
        stored_units = str(first.get("Units", "") or "") or None
    else:
        stored_units = "HU" if modality == "CT" else None
    reference = DicomReference(folder=folder, series_uid=series.uid, modality=modality,
                               sop_class_uid=str(first.get("SOPClassUID", "")), files=files,
                               sop_instance_uids=[str(ds.SOPInstanceUID) for ds in headers], header=headers[0],
                               headers=headers, affine=affine.copy())
    meta: dict[str, Any] = {"format": "dicom", "modality": modality, "units": stored_units,
                            "stored_units": stored_units, "series_uid": series.uid,
                            "series_description": series.description, "dicom_reference": reference}
    if units == "suv":
        factor, details = suv_bw_factor(headers, what=what)
        data = data * (factor if np.ndim(factor) == 0 else np.asarray(factor)[None, None, :])
        meta.update(units="suv", suv_factor=factor, suv=details)
        disk_dtype = np.dtype(np.float32)
    return Volume(array=data.astype(np.float32), affine=affine, path=folder, header=None, disk_dtype=disk_dtype,
                  meta=meta)


def _series_affine(pos: np.ndarray, row_dir: np.ndarray, col_dir: np.ndarray, spacing: np.ndarray, first: Any,
                   files: list[Path], what: str) -> np.ndarray:
    """RAS affine of sorted slices; irregular gaps, repeated positions and bent stacks are refused."""
    lps = np.eye(4)
    # PixelSpacing is (between rows, between columns); array axis 0 runs along a row (columns).
    lps[:3, 0] = row_dir * spacing[1]
    lps[:3, 1] = col_dir * spacing[0]
    n = len(pos)
    if n > 1:
        step = (pos[-1] - pos[0]) / (n - 1)
        gaps = np.linalg.norm(np.diff(pos, axis=0), axis=1)
        if gaps.min() < 1e-3:
            raise VoxdiffError(f"{what}: several images share a slice position (a 4D, multi-echo or multi-volume "
                               "series); split it into one series per volume")
        resid = np.abs(pos - (pos[0] + np.arange(n)[:, None] * step)).max()
        if resid > max(1e-2 * np.linalg.norm(step), 1e-3):
            raise VoxdiffError(f"{what}: irregular slice positions (gaps from {gaps.min():.4g} to {gaps.max():.4g} "
                               f"mm, e.g. at {files[int(np.argmax(np.abs(gaps - gaps.mean())))].name}); "
                               "missing slices or a non-uniform series cannot be read as one volume")
        lps[:3, 2] = step
    else:
        thick = first.get("SpacingBetweenSlices") or first.get("SliceThickness") or 1.0
        lps[:3, 2] = np.cross(row_dir, col_dir) * float(thick)
    lps[:3, 3] = pos[0]
    return _LPS_TO_RAS @ lps


# ------------------------------------------------------------------------------------------- SUV

def _text(ds: Any, keyword: str) -> str:
    value = ds.get(keyword)
    return "" if value is None else str(value).strip()


def _number(ds: Any, keyword: str, tag: str, what: str, *, positive: bool = True) -> float:
    text = _text(ds, keyword)
    try:
        value = float(text)
    except ValueError:
        raise VoxdiffError(f"{what}: SUV needs {keyword} {tag}, which is missing or empty") from None
    if positive and not value > 0:
        raise VoxdiffError(f"{what}: SUV needs a positive {keyword} {tag}, found {text}")
    return value


def _datetime(date: str, time: str) -> datetime.datetime | None:
    """DICOM DA + TM (or a DT in ``time`` when ``date`` is empty) as a naive datetime."""
    from pydicom.valuerep import DA, DT, TM

    try:
        if not date:
            return DT(time).replace(tzinfo=None) if time else None
        if not time:
            return None
        return datetime.datetime.combine(DA(date), TM(time))
    except (ValueError, TypeError):
        return None


def suv_bw_factor(headers: Sequence[Any], *, what: str = "PET series") -> tuple[float | np.ndarray, dict]:
    """Bq/ml -> SUV body-weight factor of a PET series: ``weight[g] / (dose[Bq] * 2^(-dt / T_half))``.

    ``headers`` are the series' slices in volume order. ``dt`` runs from the injection
    (RadiopharmaceuticalStartDateTime, else StartTime on the series date) to the time the
    images are decay corrected to: DecayCorrection START -> SeriesDate/SeriesTime (or the
    earliest AcquisitionTime when a post-processed series has a later SeriesTime), ADMIN ->
    0 (already corrected to the injection), NONE -> each slice's AcquisitionTime (one factor per
    slice). Units must be BQML (GML is SUV already: factor 1). A missing tag is refused with
    one sentence naming it. Returns the factor and the values used.
    """
    first = headers[0]
    modality = _text(first, "Modality")
    if modality != "PT":
        raise VoxdiffError(f"{what}: --units suv needs a PET series (Modality PT); this series is "
                           f"'{modality or 'unknown'}'")
    units = _text(first, "Units")
    if not units:
        raise VoxdiffError(f"{what}: SUV needs Units (0054,1001), which is missing")
    if units == "GML":
        return 1.0, {"units": units, "note": "already SUV body-weight (Units GML)"}
    if units != "BQML":
        raise VoxdiffError(f"{what}: SUV needs activity concentrations (Units BQML), the series has Units {units}")
    weight_kg = _number(first, "PatientWeight", "(0010,1030)", what)
    seq = first.get("RadiopharmaceuticalInformationSequence")
    if not seq:
        raise VoxdiffError(f"{what}: SUV needs RadiopharmaceuticalInformationSequence (0054,0016), which is missing")
    info = seq[0]
    dose = _number(info, "RadionuclideTotalDose", "(0018,1074)", what)
    correction = _text(first, "DecayCorrection").upper()
    if correction not in ("START", "ADMIN", "NONE"):
        raise VoxdiffError(f"{what}: SUV needs DecayCorrection (0054,1102) START, ADMIN or NONE, found "
                           f"'{correction or 'missing'}'")
    details: dict[str, Any] = {"units": units, "weight_kg": weight_kg, "dose_bq": dose,
                               "decay_correction": correction}
    if correction == "ADMIN":
        details["decay_s"] = 0.0
        return weight_kg * 1000.0 / dose, details
    half_life = _number(info, "RadionuclideHalfLife", "(0018,1075)", what)
    series_date = _text(first, "SeriesDate") or _text(first, "StudyDate")
    injection = _datetime("", _text(info, "RadiopharmaceuticalStartDateTime"))
    times_only = injection is None
    if injection is None:
        start = _text(info, "RadiopharmaceuticalStartTime")
        if not start:
            raise VoxdiffError(f"{what}: SUV needs RadiopharmaceuticalStartDateTime (0018,1078) or "
                               "RadiopharmaceuticalStartTime (0018,1072), both missing")
        injection = _datetime(series_date, start)
        if injection is None:
            raise VoxdiffError(f"{what}: SUV needs SeriesDate (0008,0021) with RadiopharmaceuticalStartTime "
                               f"'{start}' (missing or malformed)")

    def acquisition(ds: Any) -> datetime.datetime | None:
        return (_datetime("", _text(ds, "AcquisitionDateTime"))
                or _datetime(_text(ds, "AcquisitionDate") or series_date, _text(ds, "AcquisitionTime")))

    if correction == "START":
        scan = _datetime(series_date, _text(first, "SeriesTime"))
        acq = [t for t in (acquisition(ds) for ds in headers) if t is not None]
        if acq and (scan is None or min(acq) < scan):
            scan = min(acq)  # a post-processed series may carry a later SeriesTime
        if scan is None:
            raise VoxdiffError(f"{what}: SUV with DecayCorrection START needs SeriesTime (0008,0031) or "
                               "AcquisitionTime (0008,0032), both missing")
        scans = [scan]
    else:
        scans = []
        for ds in headers:
            t = acquisition(ds)
            if t is None:
                raise VoxdiffError(f"{what}: SUV with DecayCorrection NONE needs each slice's AcquisitionTime "
                                   f"(0008,0032); slice {_text(ds, 'SOPInstanceUID')} has none")
            scans.append(t)
    decay = np.array([(t - injection).total_seconds() for t in scans])
    if times_only and decay.min() < 0:
        decay += 86400.0  # injected before midnight, scanned after: the times alone cannot tell
    if decay.min() < 0:
        raise VoxdiffError(f"{what}: the injection time {injection} is after the scan time {min(scans)}; "
                           "check RadiopharmaceuticalStartTime and SeriesTime")
    factors = weight_kg * 1000.0 / (dose * 2.0 ** (-decay / half_life))
    details.update(half_life_s=half_life, injection=injection.isoformat(), decay_s=float(decay[0]) if
                   len(decay) == 1 else decay.tolist(), scan=scans[0].isoformat())
    if len(factors) == 1 or np.allclose(factors, factors[0], rtol=1e-12):
        return float(factors[0]), details
    return factors, details


def to_input_units(array: np.ndarray, like: Any) -> np.ndarray:
    """``array`` (in ``like``'s units) back in the units the input stored, e.g. SUV -> Bq/ml.

    Volumes read without a unit conversion are returned unchanged.
    """
    meta = getattr(like, "meta", None) or {}
    if meta.get("units") != "suv" or meta.get("stored_units") in (None, "GML"):
        return np.asarray(array)
    factor = meta["suv_factor"]
    array = np.asarray(array, dtype=np.float64)
    if np.ndim(factor) == 0:
        return array / float(factor)
    factor = np.asarray(factor, dtype=np.float64)
    if array.shape[2] != factor.size:
        raise VoxdiffError(f"the output has {array.shape[2]} slices but the input's per-slice SUV factors "
                           f"{factor.size}; write it in SUV units (NIfTI) instead")
    return array / factor[None, None, :]


# ---------------------------------------------------------------------------------------- writing

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


def save_dicom_seg(
    labels: np.ndarray,
    path: str | Path,
    *,
    like: Any,
    class_names: Sequence[str] | Mapping[int, str],
    description: str | None = None,
    model: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a label map (X, Y, Z; 0 = background) as a BINARY DICOM SEG, one segment per class.

    ``like`` must have been read from DICOM (the SEG references its images and frame) and
    ``labels`` lie on its grid. ``class_names`` names labels ``1..K`` (a sequence, as
    :class:`voxdiff.data.labels.LabelScheme.class_names`) or maps label values to names.
    ``path`` ending in ``.dcm`` is written as that file, any other path as a new folder holding
    ``SEG.dcm``. Returns the file written.
    """
    _pydicom()
    try:
        import highdicom as hd
        from pydicom.sr.codedict import codes
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise VoxdiffError("writing DICOM SEG needs highdicom: pip install 'voxdiff[dicom]'") from exc
    from pydicom import dcmread
    from pydicom.uid import generate_uid

    import voxdiff

    path = Path(path)
    meta = getattr(like, "meta", None) or {}
    ref: DicomReference | None = meta.get("dicom_reference")
    if ref is None:
        source = getattr(like, "path", None)
        raise VoxdiffError(f"{path}: DICOM SEG output needs a DICOM input series to reference, and "
                           f"{source or 'the input'} is not one; write the labels as NIfTI instead")
    labels = np.asarray(labels)
    if labels.shape != tuple(like.array.shape[:3]) or len(ref.files) != labels.shape[2] \
            or not np.allclose(ref.affine, like.affine, atol=1e-4):
        raise VoxdiffError(f"{path}: labels of shape {labels.shape} do not lie on the input series' grid "
                           f"{tuple(like.array.shape[:3])}; DICOM SEG must be written in the input's geometry")
    if not np.all(labels == np.rint(labels)) or labels.min() < 0:
        raise VoxdiffError(f"{path}: labels must be non-negative integers")
    names = dict(class_names) if isinstance(class_names, Mapping) else {i + 1: n for i, n in enumerate(class_names)}
    unknown = sorted(set(np.unique(labels).astype(int).tolist()) - set(names) - {0})
    if unknown:
        raise VoxdiffError(f"{path}: label value(s) {unknown} have no class name (names given for "
                           f"{sorted(names)})")
    numbers = sorted(names)
    algorithm = hd.AlgorithmIdentificationSequence(name=(model or "voxdiff")[:64],
                                                   family=codes.DCM.ArtificialIntelligence,
                                                   version=voxdiff.__version__)
    segments = [hd.seg.SegmentDescription(segment_number=i + 1, segment_label=str(names[v])[:64],
                                          segmented_property_category=codes.SCT.Tissue,
                                          segmented_property_type=codes.SCT.Tissue,
                                          algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                                          algorithm_identification=algorithm)
                for i, v in enumerate(numbers)]
    # Frames follow the source images (axis 2); each frame is (rows, columns) = array (y, x).
    masks = np.stack([np.transpose(labels == v, (2, 1, 0)) for v in numbers], axis=-1)
    try:
        sources = [dcmread(f) for f in ref.files]
    except Exception as exc:
        raise VoxdiffError(f"{ref.folder}: could not re-read the source series for DICOM SEG ({exc})") from exc
    seg = hd.seg.Segmentation(
        source_images=sources, pixel_array=masks, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=segments, series_instance_uid=generate_uid(),
        series_number=1000 + int(ref.header.get("SeriesNumber") or 0) + 1, sop_instance_uid=generate_uid(),
        instance_number=1, manufacturer="voxdiff", manufacturer_model_name=(model or "voxdiff")[:64],
        software_versions=f"voxdiff {voxdiff.__version__}", device_serial_number="0",
        series_description=_series_description(description or "segmentation", model), omit_empty_frames=False)
    if path.suffix.lower() == ".dcm":
        if path.exists() and not overwrite:
            raise VoxdiffError(f"{path}: exists; choose a new file name or allow overwriting")
        with atomic_path(path) as tmp:
            seg.save_as(tmp)
        return path
    with _atomic_folder(path, overwrite) as tmp:
        seg.save_as(tmp / "SEG.dcm")
    return path / "SEG.dcm"
