"""Reading one classic single-frame DICOM series into an array and a RAS affine (see :mod:`voxdiff.io.dicom`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from voxdiff.errors import VoxdiffError
from voxdiff.io.dicom.common import DicomReference, DicomSeriesInfo, UNITS, _LPS_TO_RAS, _MULTIFRAME_HINT, _pydicom
from voxdiff.io.dicom.suv import suv_bw_factor


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


