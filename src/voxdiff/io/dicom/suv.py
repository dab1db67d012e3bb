"""SUV body-weight from a PET series' radiopharmaceutical tags, with decay correction, and back."""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from typing import Any

import numpy as np

from voxdiff.errors import VoxdiffError


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


