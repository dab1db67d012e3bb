"""Tiny synthetic DICOM series for tests, written with pydicom alone (independent of voxdiff.io.dicom).

Geometry follows the DICOM standard directly: the affine (RAS, as nibabel) is turned into LPS,
its first two columns give ImageOrientationPatient and PixelSpacing, its origin plus k times its
third column the ImagePositionPatient of slice k. Files are written in a shuffled order under
names unrelated to the slice order, so that readers must sort by position.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

SOP_CLASS = {"CT": "1.2.840.10008.5.1.4.1.1.2", "MR": "1.2.840.10008.5.1.4.1.1.4", "PT": "1.2.840.10008.5.1.4.1.1.128"}
LPS = np.diag([-1.0, -1.0, 1.0, 1.0])

# F-18 FDG: 370 MBq injected at 10:00:00, series started at 11:00:00 (dt = 3600 s), 75 kg.
PET_DOSE_BQ = 370e6
PET_HALF_LIFE_S = 6586.2
PET_WEIGHT_KG = 75.0
PET_DECAY_S = 3600.0


def oblique_affine(spacing=(1.2, 0.9, 2.5), angles_deg=(20.0, -12.0, 8.0), origin=(-30.0, 12.5, 40.0),
                   flip_axis: int | None = None) -> np.ndarray:
    """A RAS affine with rotations about the three axes, anisotropic spacing and optionally one flipped axis."""
    ax, ay, az = np.deg2rad(angles_deg)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    rot = rz @ ry @ rx
    aff = np.eye(4)
    aff[:3, :3] = rot @ np.diag(spacing)
    if flip_axis is not None:
        aff[:3, flip_axis] *= -1
    aff[:3, 3] = origin
    return aff


def pet_tags(*, decay_correction: str = "START", units: str = "BQML", weight_kg: float | None = PET_WEIGHT_KG,
             dose_bq: float | None = PET_DOSE_BQ, half_life_s: float | None = PET_HALF_LIFE_S,
             injection: str = "100000.00", series_time: str = "110000.00", start_datetime: bool = False) -> dict:
    """PET tags of an F-18 study (defaults: 370 MBq at 10:00, series at 11:00, 75 kg, START, BQML).

    A tag given as None is left out (to test the refusal naming it).
    """
    return {"decay_correction": decay_correction, "units": units, "weight_kg": weight_kg, "dose_bq": dose_bq,
            "half_life_s": half_life_s, "injection": injection, "series_time": series_time,
            "start_datetime": start_datetime}


def _ds(value: float) -> str:
    return pydicom.valuerep.format_number_as_ds(float(value))


def write_series(folder: str | Path, array: np.ndarray, affine: np.ndarray, *, modality: str = "MR",
                 per_slice_rescale: bool = False, slope: float | None = None, intercept: float = 0.0,
                 pet: dict | None = None, series_uid: str | None = None, study_uid: str | None = None,
                 description: str = "synthetic", seed: int = 0, acquisition_times: list[str] | None = None,
                 positions: list | None = None, numbering: str = "slice") -> tuple[list[Path], np.ndarray]:
    """Write ``array`` (X, Y, Z, values in real units) as one series; return (files, values as stored).

    Stored integers are int16: slope 1 when ``slope`` is None and the values are integers, else the
    given slope (or one per slice with ``per_slice_rescale``). The returned values are what a
    correct reader must give back (the quantised array). ``positions`` overrides the per-slice
    ImagePositionPatient (to test irregular series). ``numbering="slice"`` gives InstanceNumber
    k + 1 to slice k (as scanners do); ``"shuffled"`` numbers the files in their random write order.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    array = np.asarray(array, dtype=np.float64)
    nx, ny, nz = array.shape
    lps = LPS @ np.asarray(affine, dtype=np.float64)
    col_sp, row_sp = np.linalg.norm(lps[:3, 0]), np.linalg.norm(lps[:3, 1])
    iop = list(lps[:3, 0] / col_sp) + list(lps[:3, 1] / row_sp)
    series_uid = series_uid or generate_uid()
    study_uid = study_uid or generate_uid()
    frame_uid = generate_uid()
    rng = np.random.default_rng(seed)
    order = [int(k) for k in rng.permutation(nz)]
    files, restored = [], np.zeros_like(array)
    for n, k in enumerate(order):
        values = array[:, :, k]
        if per_slice_rescale:
            lo, hi = values.min(), values.max()
            s = float(_ds(max(hi - lo, 1e-6) / 60000.0))
            b = float(_ds(lo + 30000 * s))
        else:
            s, b = (1.0 if slope is None else float(_ds(slope))), float(_ds(intercept))
        stored = np.clip(np.rint((values - b) / s), -32768, 32767).astype(np.int16)
        restored[:, :, k] = stored.astype(np.float64) * s + b

        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = SOP_CLASS[modality]
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = meta.MediaStorageSOPClassUID
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.Modality = modality
        ds.PatientName = "Test^Phantom"
        ds.PatientID = "VOXDIFF-TEST-1"
        ds.PatientBirthDate = "19700101"
        ds.PatientSex = "O"
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.FrameOfReferenceUID = frame_uid
        ds.PositionReferenceIndicator = ""
        ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = "20240315"
        ds.StudyTime = "095500.00"
        ds.SeriesTime = (pet or {}).get("series_time", "110000.00")
        ds.AcquisitionTime = acquisition_times[k] if acquisition_times else ds.SeriesTime
        ds.ContentTime = ds.SeriesTime
        ds.StudyID = "1"
        ds.AccessionNumber = "A1"
        ds.ReferringPhysicianName = ""
        ds.Manufacturer = "voxdiff-tests"
        ds.SeriesNumber = 3
        ds.InstanceNumber = (k if numbering == "slice" else n) + 1
        ds.SeriesDescription = description
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.ImageOrientationPatient = [_ds(v) for v in iop]
        pos = lps[:3, 3] + k * lps[:3, 2] if positions is None else np.asarray(positions[k], dtype=float)
        ds.ImagePositionPatient = [_ds(v) for v in pos]
        ds.PixelSpacing = [_ds(row_sp), _ds(col_sp)]
        ds.SliceThickness = _ds(np.linalg.norm(lps[:3, 2]))
        ds.Rows, ds.Columns = ny, nx
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1
        ds.RescaleSlope = _ds(s)
        ds.RescaleIntercept = _ds(b)
        ds.PixelData = np.ascontiguousarray(stored.T).tobytes()  # rows = y, columns = x
        if modality == "PT":
            _add_pet(ds, pet or pet_tags(), nz, k)
        path = folder / f"f{rng.integers(1 << 30):010d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    return files, restored.astype(np.float32)


def _add_pet(ds: Dataset, pet: dict, nz: int, k: int) -> None:
    ds.Units = pet["units"]
    ds.DecayCorrection = pet["decay_correction"]
    ds.CorrectedImage = ["ATTN", "DECY"] if pet["decay_correction"] != "NONE" else ["ATTN"]
    ds.SeriesType = ["STATIC", "IMAGE"]
    ds.CountsSource = "EMISSION"
    ds.NumberOfSlices = nz
    ds.ImageIndex = k + 1
    ds.FrameReferenceTime = "0"
    ds.ActualFrameDuration = 600000
    if pet["weight_kg"] is not None:
        ds.PatientWeight = _ds(pet["weight_kg"])
    info = Dataset()
    info.Radiopharmaceutical = "Fluorodeoxyglucose"
    if pet["injection"] is not None:
        if pet["start_datetime"]:
            info.RadiopharmaceuticalStartDateTime = ds.SeriesDate + pet["injection"]
        else:
            info.RadiopharmaceuticalStartTime = pet["injection"]
    if pet["dose_bq"] is not None:
        info.RadionuclideTotalDose = _ds(pet["dose_bq"])
    if pet["half_life_s"] is not None:
        info.RadionuclideHalfLife = _ds(pet["half_life_s"])
    nuclide = Dataset()
    nuclide.CodeValue, nuclide.CodingSchemeDesignator, nuclide.CodeMeaning = "C-111A1", "SRT", "^18^Fluorine"
    info.RadionuclideCodeSequence = [nuclide]
    ds.RadiopharmaceuticalInformationSequence = [info]


def smooth_volume(shape=(16, 16, 8), lo: float = 0.0, hi: float = 1000.0, seed: int = 0) -> np.ndarray:
    """A smooth blob plus a little noise, spanning about ``lo .. hi`` (float64)."""
    rng = np.random.default_rng(seed)
    g = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"))
    r = np.sqrt((g ** 2).sum(0))
    v = np.clip(1.2 - r, 0, None) + 0.05 * rng.random(shape)
    return lo + (hi - lo) * v / v.max()

