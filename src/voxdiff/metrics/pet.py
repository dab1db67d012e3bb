"""The quantities PET users report: regional bias, lesion contrast recovery, noise, invented hot spots.

Every function takes numpy arrays that share one shape (prediction, reference, region map,
lesion map) plus the voxel spacing in mm, and returns plain floats, dicts and lists. The exact
definitions are in ``docs/metrics.md``; in short:

* **Regions** (:func:`pet_region_map`): MUSE labels grouped into ``gm`` (cortical grey matter),
  ``wm``, ``deep_gm`` (caudate, putamen, pallidum, thalamus, accumbens), ``cerebellum``
  (cerebellar cortex: exterior and vermal lobules) and ``other`` brain tissue; CSF and
  everything outside the labels is 0. The grouping reuses the region classes of
  :func:`voxdiff.sim.pet.muse_region_classes`, so the metrics and the simulator agree.
* **Regional bias** (:func:`regional_bias`): ``100 (mean_pred - mean_ref) / mean_ref`` per
  region, lesion voxels excluded.
* **CRC / BV** (:func:`lesion_crc`): per lesion of the lesion table, the mean in the lesion ROI
  over the mean in a background shell ``[r + gap, r + gap + width]`` mm from the centre (same
  tissue, preferably its core away from other tissues; other lesions excluded):
  ``CRC = (ratio - 1) / (contrast - 1)``; ``BV = std / mean`` of the shell voxels. A
  single-volume version of NEMA NU 2 (see docs).
* **Hot spots** (:func:`hotspots`): connected clusters where the prediction is at least
  ``threshold`` times its local same-tissue background while the reference is not.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from voxdiff.errors import VoxdiffError
from voxdiff.metrics.image import image_metrics

__all__ = [
    "PET_REGIONS",
    "REGION_CODES",
    "DEFAULT_SIZE_BINS_MM",
    "DEFAULT_GAP_MM",
    "DEFAULT_WIDTH_MM",
    "DEFAULT_EDGE_MM",
    "DEFAULT_HOTSPOT_THRESHOLD",
    "DEFAULT_HOTSPOT_WINDOW_MM",
    "pet_region_map",
    "regional_bias",
    "lesion_specs",
    "read_lesion_json",
    "lesion_crc",
    "background_variability",
    "size_bin",
    "crc_summary",
    "hotspots",
    "pet_metrics",
]

#: Regions of :func:`regional_bias`, in column order.
PET_REGIONS = ("gm", "wm", "deep_gm", "cerebellum")
#: Codes of :func:`pet_region_map` (0 = CSF or outside the labelled brain).
REGION_CODES: dict[str, int] = {"gm": 1, "wm": 2, "deep_gm": 3, "cerebellum": 4, "other": 5}
DEFAULT_SIZE_BINS_MM = (4.0, 8.0, 16.0)
DEFAULT_GAP_MM = 6.0
DEFAULT_WIDTH_MM = 8.0
DEFAULT_EDGE_MM = 4.0
DEFAULT_MIN_BACKGROUND_VOXELS = 30
#: Lesions fainter than this in the activity map (true ROI / background ratio) are not scored.
DEFAULT_MIN_TRUE_CONTRAST = 1.5
DEFAULT_HOTSPOT_THRESHOLD = 1.5
DEFAULT_HOTSPOT_WINDOW_MM = 17.0

# voxdiff.sim.pet region classes -> metric regions; None = not brain tissue (CSF).
_CLASS_TO_REGION: dict[str, str | None] = {
    "cortical_gm": "gm",
    "wm": "wm",
    "striatum": "deep_gm",
    "accumbens": "deep_gm",
    "thalamus": "deep_gm",
    "pallidum": "deep_gm",
    "cerebellum_gm": "cerebellum",
    "mesial_temporal": "other",
    "basal_forebrain": "other",
    "ventral_dc": "other",
    "brainstem": "other",
    "other": "other",
    "csf": None,
}
# Lesion-table region names (any case) -> region codes.
_LESION_REGION = {"gm": "gm", "wm": "wm", "deep_gm": "deep_gm", "deepgm": "deep_gm", "cerebellum": "cerebellum"}


# --- inputs ---------------------------------------------------------------------------------------

def _float(array: np.ndarray, what: str, shape: tuple[int, ...] | None = None) -> np.ndarray:
    array = np.asarray(array, dtype=np.float64)
    if array.ndim != 3:
        raise VoxdiffError(f"{what} must be a 3D volume, got shape {array.shape}")
    if shape is not None and array.shape != shape:
        raise VoxdiffError(f"{what} shape {array.shape} differs from prediction shape {shape}")
    if not np.isfinite(array).all():
        raise VoxdiffError(f"{what} contains NaN/Inf values")
    return array


def _ints(array: np.ndarray | None, what: str, shape: tuple[int, ...]) -> np.ndarray | None:
    if array is None:
        return None
    from voxdiff.metrics.segmentation import _as_labels

    array = _as_labels(array, what)
    if array.shape != shape:
        raise VoxdiffError(f"{what} shape {array.shape} differs from prediction shape {shape}")
    return array


def _spacing(spacing: Sequence[float]) -> np.ndarray:
    sp = np.asarray([float(s) for s in spacing], dtype=np.float64)
    if sp.shape != (3,) or not (np.isfinite(sp).all() and (sp > 0).all()):
        raise VoxdiffError(f"spacing must be three positive numbers (mm), got {list(spacing)}")
    return sp


def pet_region_map(labels: np.ndarray, tables_dir: str | Path | None = None) -> np.ndarray:
    """MUSE label map -> region codes of :data:`REGION_CODES` (uint8; 0 = CSF or unlabelled).

    Regions are found by name and composite in the MUSE tables of ``tables_dir`` (default: the
    shared IXI folder), exactly as :func:`voxdiff.sim.pet.muse_region_classes` assigns uptakes.
    """
    from voxdiff.metrics.segmentation import _as_labels
    from voxdiff.sim.pet import find_muse_tables, load_muse_tables, muse_region_classes

    labels = _as_labels(labels, "region label map")
    if labels.size and labels.min() < 0:
        raise VoxdiffError(f"region label map holds negative values (found {labels.min()})")
    names, derived = load_muse_tables(tables_dir if tables_dir is not None else find_muse_tables())
    present = [int(v) for v in np.unique(labels) if v != 0]
    lut = np.zeros(int(labels.max(initial=0)) + 1, dtype=np.uint8)
    for lab, cls in muse_region_classes(present, names, derived).items():
        region = _CLASS_TO_REGION.get(cls, "other")
        lut[lab] = 0 if region is None else REGION_CODES[region]
    return lut[labels]


def lesion_specs(doc: Mapping[str, Any] | Sequence[Mapping[str, Any]], where: str = "lesion table") -> list[dict[str, Any]]:
    """Validated lesions of a lesion table (the ``<case>_lesions.json`` document or its ``lesions`` list).

    Each lesion needs ``id`` (int > 0), ``centre_voxel`` (3 numbers), ``diameter_mm`` (> 0) and
    ``contrast`` (> 0, the true lesion / background activity ratio); ``region`` is optional.
    A document with ``lesion_free: true`` must list no lesion.
    """
    if isinstance(doc, Mapping):
        lesions = doc.get("lesions", [])
        if doc.get("lesion_free") and lesions:
            raise VoxdiffError(f"{where}: 'lesion_free' is true but {len(lesions)} lesion(s) are listed")
    else:
        lesions = doc
    if not isinstance(lesions, (list, tuple)):
        raise VoxdiffError(f"{where}: 'lesions' must be a list")
    out: list[dict[str, Any]] = []
    seen: set[int] = set()
    for n, les in enumerate(lesions):
        try:
            lid = les["id"]
            centre = [float(v) for v in les["centre_voxel"]]
            diameter = float(les["diameter_mm"])
            contrast = float(les["contrast"])
        except (KeyError, TypeError, ValueError) as exc:
            raise VoxdiffError(f"{where}: lesion {n} lacks a valid id, centre_voxel, diameter_mm or contrast ({exc})") from None
        if isinstance(lid, bool) or not isinstance(lid, int) or lid <= 0:
            raise VoxdiffError(f"{where}: lesion {n} has id {lid!r}; ids are positive integers (0 = no lesion)")
        if lid in seen:
            raise VoxdiffError(f"{where}: lesion id {lid} appears twice")
        seen.add(lid)
        if len(centre) != 3 or not all(map(math.isfinite, centre)):
            raise VoxdiffError(f"{where}: lesion {lid} centre_voxel must be 3 finite numbers")
        if not (math.isfinite(diameter) and diameter > 0):
            raise VoxdiffError(f"{where}: lesion {lid} diameter_mm must be positive, got {diameter}")
        if not (math.isfinite(contrast) and contrast > 0):
            raise VoxdiffError(f"{where}: lesion {lid} contrast must be positive, got {contrast}")
        region = les.get("region")
        out.append({"id": lid, "centre_voxel": centre, "diameter_mm": diameter, "contrast": contrast,
                    "region": None if region is None else str(region)})
    return out


def read_lesion_json(path: str | Path) -> dict[str, Any]:
    """Read a ``<case>_lesions.json`` table: ``{"case", "lesion_free", "lesions": validated}``."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise VoxdiffError(f"{path}: lesion table not found (expected beside the lesion map)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise VoxdiffError(f"{path}: not a readable JSON lesion table ({exc})") from None
    if not isinstance(doc, dict):
        raise VoxdiffError(f"{path}: a lesion table is a JSON object with a 'lesions' list")
    lesions = lesion_specs(doc, str(path))
    return {"case": doc.get("case"), "lesion_free": bool(doc.get("lesion_free", not lesions)), "lesions": lesions}


# --- regional bias -------------------------------------------------------------------------------

def regional_bias(
    pred: np.ndarray,
    reference: np.ndarray,
    regions: np.ndarray,
    lesion_map: np.ndarray | None = None,
) -> dict[str, float]:
    """Mean bias (%) per region: ``{"bias_gm", "bias_wm", "bias_deep_gm", "bias_cerebellum"}``.

    ``100 (mean(pred) - mean(reference)) / mean(reference)`` over the voxels of each region of
    ``regions`` (codes of :func:`pet_region_map`), lesion voxels (``lesion_map != 0``) excluded.
    NaN for a region with no voxel or a non-positive reference mean.
    """
    pred = _float(pred, "prediction")
    reference = _float(reference, "reference", pred.shape)
    regions = _ints(regions, "region map", pred.shape)
    lesion_map = _ints(lesion_map, "lesion map", pred.shape)
    keep = np.ones(pred.shape, bool) if lesion_map is None else lesion_map == 0
    out: dict[str, float] = {}
    for name in PET_REGIONS:
        m = (regions == REGION_CODES[name]) & keep
        ref_mean = float(reference[m].mean()) if m.any() else math.nan
        out[f"bias_{name}"] = (100.0 * (float(pred[m].mean()) - ref_mean) / ref_mean
                               if m.any() and ref_mean > 0 else math.nan)
    return out


# --- lesions: CRC and BV -------------------------------------------------------------------------

def background_variability(values: np.ndarray) -> float:
    """``std / mean`` of background voxel values (sample std, ddof = 1); NaN for < 2 voxels or mean <= 0."""
    values = np.asarray(values, dtype=np.float64).ravel()
    if values.size < 2:
        return math.nan
    mean = float(values.mean())
    return float(values.std(ddof=1)) / mean if mean > 0 else math.nan


def _box(shape: tuple[int, ...], centre: np.ndarray, radius_mm: float, spacing: np.ndarray) -> tuple[slice, ...]:
    half = np.ceil(radius_mm / spacing).astype(int) + 1
    lo = np.maximum(np.floor(centre).astype(int) - half, 0)
    hi = np.minimum(np.ceil(centre).astype(int) + half + 1, shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))


def _distance_mm(box: tuple[slice, ...], centre: Sequence[float], spacing: np.ndarray) -> np.ndarray:
    axes = [(np.arange(s.start, s.stop) - c) * sp for s, c, sp in zip(box, centre, spacing)]
    return np.sqrt(axes[0][:, None, None] ** 2 + axes[1][None, :, None] ** 2 + axes[2][None, None, :] ** 2)


def _ratio_crc(lesion_mean: float, background_mean: float, contrast: float) -> float:
    if not (background_mean > 0) or not math.isfinite(contrast) or contrast == 1.0:
        return math.nan
    return (lesion_mean / background_mean - 1.0) / (contrast - 1.0)


def lesion_crc(
    pred: np.ndarray,
    lesions: Sequence[Mapping[str, Any]],
    spacing: Sequence[float],
    *,
    truth: np.ndarray | None = None,
    lesion_map: np.ndarray | None = None,
    regions: np.ndarray | None = None,
    gap_mm: float = DEFAULT_GAP_MM,
    width_mm: float = DEFAULT_WIDTH_MM,
    edge_mm: float = DEFAULT_EDGE_MM,
    min_background_voxels: int = DEFAULT_MIN_BACKGROUND_VOXELS,
    size_bins: Sequence[float] = DEFAULT_SIZE_BINS_MM,
    activity: np.ndarray | None = None,
    min_true_contrast: float = DEFAULT_MIN_TRUE_CONTRAST,
) -> list[dict[str, Any]]:
    """Contrast recovery and background variability of each lesion, in the prediction and the truth.

    Lesion ROI: the voxels of ``lesion_map == id`` (or, without a map or when the id has no
    voxel, the voxels within ``diameter_mm / 2`` of ``centre_voxel``). Background: the shell of
    voxels whose centre lies between ``r + gap_mm`` and ``r + gap_mm + width_mm`` from the
    lesion centre, minus every lesion voxel and everything within ``r_j + gap_mm`` of another
    lesion; with ``regions``, restricted to the first of these that keeps
    ``min_background_voxels``: the lesion's tissue (its ``region``) farther than ``edge_mm``
    from any other tissue (``"tissue_core"``: no partial-volume spill from a neighbouring
    tissue), the lesion's tissue (``"tissue"``), brain tissue (``regions > 0``, ``"brain"``);
    else the whole shell (``"shell"``). The ``background`` field says which.
    ``CRC = (mean_roi / mean_bg - 1) / (contrast - 1)``, ``BV = std / mean`` of the background
    voxels. With ``activity`` (the noise-free, unblurred activity map) the true contrast is
    measured in it with the same ROI and background (NEMA's actual activity ratio), instead of
    the table's ``contrast`` (relative to what the sphere replaced, often a tissue mix); a lesion
    whose true contrast is below ``min_true_contrast`` gets NaN CRCs (too faint to score).
    Returns one dict per lesion with ``crc``, ``bv``, ``crc_truth``, ``bv_truth`` (NaN without a
    truth), ``true_contrast``, the ROI and background means and voxel counts.
    """
    pred = _float(pred, "prediction")
    sp = _spacing(spacing)
    truth = None if truth is None else _float(truth, "truth", pred.shape)
    activity = None if activity is None else _float(activity, "activity", pred.shape)
    lesion_map = _ints(lesion_map, "lesion map", pred.shape)
    regions = _ints(regions, "region map", pred.shape)
    if not (gap_mm >= 0 and width_mm > 0 and edge_mm >= 0):
        raise VoxdiffError(f"the background shell needs gap >= 0, width > 0 and edge >= 0 mm, got {gap_mm}, {width_mm}, {edge_mm}")
    specs = lesion_specs(list(lesions))
    if lesion_map is not None:
        unlisted = sorted(set(np.unique(lesion_map).tolist()) - {0} - {les["id"] for les in specs})
        if unlisted:
            raise VoxdiffError(f"the lesion map holds id(s) {unlisted[:5]} that the lesion table does not list")
    shape = pred.shape
    for les in specs:
        c = np.asarray(les["centre_voxel"])
        if (c < -0.5).any() or (c > np.asarray(shape) - 0.5).any():
            raise VoxdiffError(f"lesion {les['id']}: centre_voxel {les['centre_voxel']} lies outside the {shape} volume")
    out = []
    for les in specs:
        centre = np.asarray(les["centre_voxel"], dtype=np.float64)
        r = les["diameter_mm"] / 2.0
        outer = r + gap_mm + width_mm
        # The box reaches edge_mm past the shell so that tissue edges just outside it count.
        box = _box(shape, centre, outer + (edge_mm if regions is not None else 0.0), sp)
        dist = _distance_mm(box, centre, sp)
        roi = None
        if lesion_map is not None:
            roi = lesion_map[box] == les["id"]
            if not roi.any():
                roi = None  # a lesion map without this id (e.g. one smaller than a voxel)
        roi_source = "map" if roi is not None else "sphere"
        if roi is None:
            roi = dist <= r
            if not roi.any():  # centre between voxels and r < half a voxel: the nearest voxel
                roi = dist == dist.min()
        shell = (dist >= r + gap_mm) & (dist <= outer)
        if lesion_map is not None:
            shell &= lesion_map[box] == 0
        for other in specs:
            if other["id"] != les["id"]:
                shell &= _distance_mm(box, other["centre_voxel"], sp) > other["diameter_mm"] / 2.0 + gap_mm
        background = "shell"
        if regions is not None:
            reg = regions[box]
            code = REGION_CODES.get(_LESION_REGION.get((les["region"] or "").lower(), ""), None)
            options = []
            if code is not None:
                member = reg == code
                # No other tissue in the box: all of it is core (the EDT needs a zero to measure to).
                core = member if member.all() or not member.any() else ndi.distance_transform_edt(member, sampling=sp) > edge_mm
                options += [("tissue_core", shell & core), ("tissue", shell & member)]
            options.append(("brain", shell & (reg > 0)))
            for name, candidate in options:
                if candidate.sum() >= min_background_voxels:
                    shell, background = candidate, name
                    break
        row: dict[str, Any] = {
            "id": les["id"], "diameter_mm": les["diameter_mm"], "size_bin_mm": size_bin(les["diameter_mm"], size_bins),
            "contrast": les["contrast"], "region": les["region"], "roi": roi_source, "background": background,
            "n_roi_voxels": int(roi.sum()), "n_background_voxels": int(shell.sum()),
        }
        contrast = float(les["contrast"])
        if activity is not None:
            act = activity[box]
            act_bg = float(act[shell].mean()) if shell.any() else math.nan
            contrast = float(act[roi].mean()) / act_bg if act_bg > 0 else math.nan
            if not contrast >= min_true_contrast:
                contrast = math.nan
        row["true_contrast"] = contrast
        for name, image in (("", pred), ("_truth", truth)):
            if image is None:
                row.update({f"roi_mean{name}": math.nan, f"background_mean{name}": math.nan,
                            f"crc{name}": math.nan, f"bv{name}": math.nan})
                continue
            crop = image[box]
            roi_mean = float(crop[roi].mean())
            bg = crop[shell]
            bg_mean = float(bg.mean()) if bg.size else math.nan
            row.update({f"roi_mean{name}": roi_mean, f"background_mean{name}": bg_mean,
                        f"crc{name}": _ratio_crc(roi_mean, bg_mean, contrast),
                        f"bv{name}": background_variability(bg)})
        out.append(row)
    return out


def size_bin(diameter_mm: float, bins: Sequence[float] = DEFAULT_SIZE_BINS_MM) -> float:
    """The bin (mm) nearest to ``diameter_mm`` on a log scale (bins 4, 8: up to sqrt(32) = 5.7 mm goes to 4)."""
    bins = [float(b) for b in bins]
    if not bins or min(bins) <= 0:
        raise VoxdiffError(f"lesion size bins must be positive diameters in mm, got {bins}")
    return min(bins, key=lambda b: abs(math.log(diameter_mm / b)))


def _bin_name(b: float) -> str:
    return f"{b:g}mm"


def crc_summary(per_lesion: Iterable[Mapping[str, Any]], size_bins: Sequence[float] = DEFAULT_SIZE_BINS_MM) -> dict[str, float]:
    """One case's lesion columns: ``n_lesions``, ``crc_<b>mm`` and ``crc_truth_<b>mm`` per size bin, ``bv``, ``bv_truth``.

    CRC columns are the mean over the case's lesions in that bin (NaN when none); ``bv`` is the
    mean BV over all its lesions. Lesions are binned by :func:`size_bin`.
    """
    rows = list(per_lesion)

    def mean(values: list[float]) -> float:
        finite = [v for v in values if math.isfinite(v)]
        return float(np.mean(finite)) if finite else math.nan

    out: dict[str, float] = {"n_lesions": float(len(rows))}
    for b in size_bins:
        in_bin = [r for r in rows if size_bin(r["diameter_mm"], size_bins) == float(b)]
        out[f"crc_{_bin_name(b)}"] = mean([r["crc"] for r in in_bin])
    for b in size_bins:
        in_bin = [r for r in rows if size_bin(r["diameter_mm"], size_bins) == float(b)]
        out[f"crc_truth_{_bin_name(b)}"] = mean([r["crc_truth"] for r in in_bin])
    out["bv"] = mean([r["bv"] for r in rows])
    out["bv_truth"] = mean([r["bv_truth"] for r in rows])
    return out


# --- invented hot spots --------------------------------------------------------------------------

def _window(window_mm: float, spacing: np.ndarray) -> tuple[int, ...]:
    # Odd voxel counts closest to window_mm per axis (17 mm at 2 mm: 9 voxels).
    return tuple(int(max(1, 2 * round(window_mm / (2 * s) - 0.5) + 1)) for s in spacing)


def _local_tissue_mean(image: np.ndarray, classes: np.ndarray, size: tuple[int, ...], threshold: float) -> np.ndarray:
    """Mean of ``image`` over the same-class voxels of a ``size`` box, hot voxels left out (2 passes).

    A normalised convolution per class: ``box(image * w) / box(w)``. The second pass drops
    the voxels at or above ``threshold`` times the first-pass mean, so a hot spot does not
    raise its own background.
    """
    out = np.zeros(image.shape, dtype=np.float64)
    for code in (int(c) for c in np.unique(classes) if c != 0):
        member = classes == code
        weight = member.astype(np.float64)
        den = ndi.uniform_filter(weight, size, mode="constant")
        local = ndi.uniform_filter(image * weight, size, mode="constant") / np.where(den > 0, den, 1.0)
        cold = member & (image < threshold * local)
        weight = cold.astype(np.float64)
        den2 = ndi.uniform_filter(weight, size, mode="constant")
        robust = ndi.uniform_filter(image * weight, size, mode="constant") / np.where(den2 > 0, den2, 1.0)
        # den2 ~ 0: every neighbour was hot; keep the first-pass mean there.
        out[member] = np.where(den2[member] > 1e-9, robust[member], local[member])
    return out


def _contrast(image: np.ndarray, classes: np.ndarray, size: tuple[int, ...], threshold: float) -> np.ndarray:
    background = _local_tissue_mean(image, classes, size, threshold)
    ratio = np.zeros(image.shape, dtype=np.float64)
    ok = (classes > 0) & (background > 0)
    ratio[ok] = image[ok] / background[ok]
    return ratio


def hotspots(
    pred: np.ndarray,
    reference: np.ndarray,
    spacing: Sequence[float],
    *,
    regions: np.ndarray | None = None,
    mask: np.ndarray | None = None,
    lesions: Sequence[Mapping[str, Any]] = (),
    lesion_map: np.ndarray | None = None,
    threshold: float = DEFAULT_HOTSPOT_THRESHOLD,
    window_mm: float = DEFAULT_HOTSPOT_WINDOW_MM,
    exclude_mm: float = DEFAULT_GAP_MM,
) -> dict[str, Any]:
    """Hot spots of the prediction that the reference (the truth) does not have.

    Local contrast = image / its local background: the mean of the same-tissue voxels (region
    codes of ``regions``; one class = ``mask`` without regions) in a ``window_mm`` box, with the
    hot voxels left out of that mean. A hot spot is a 26-connected cluster of search voxels
    where the prediction's contrast is ``>= threshold`` and none of whose voxels is "true":
    within one voxel of a reference voxel of contrast ``>= threshold``, or within ``r + exclude_mm``
    of a listed lesion (or 1 voxel of ``lesion_map``). Search voxels: brain tissue
    (``regions > 0``; CSF excluded) inside ``mask``; without either, the voxels of the reference
    above 10 % of its 99.9th percentile.

    Returns ``{"hotspots": count, "hotspot_peak": float, "spots": [{"voxel", "peak_contrast",
    "n_voxels"}]}``; ``hotspot_peak`` is the highest prediction contrast outside the true spots
    (the worst hot spot's peak when there is one, the margin below ``threshold`` when not).
    """
    pred = _float(pred, "prediction")
    reference = _float(reference, "reference", pred.shape)
    sp = _spacing(spacing)
    regions = _ints(regions, "region map", pred.shape)
    lesion_map = _ints(lesion_map, "lesion map", pred.shape)
    if mask is not None:
        mask = np.asarray(mask).astype(bool)
        if mask.shape != pred.shape:
            raise VoxdiffError(f"mask shape {mask.shape} differs from prediction shape {pred.shape}")
    if not (math.isfinite(threshold) and threshold > 1):
        raise VoxdiffError(f"the hot-spot threshold is a contrast > 1, got {threshold}")
    if regions is not None:
        classes = np.where(regions > 0, regions, 0).astype(np.int16)
        if mask is not None:
            classes[~mask] = 0
    elif mask is not None:
        classes = mask.astype(np.int16)
    else:
        classes = (reference > 0.1 * np.percentile(reference, 99.9)).astype(np.int16)
    search = classes > 0
    if not search.any():
        raise VoxdiffError("the hot-spot search region is empty (no brain tissue in the region map or mask)")
    size = _window(window_mm, sp)
    r_pred = _contrast(pred, classes, size, threshold)
    r_ref = _contrast(reference, classes, size, threshold)
    cube = np.ones((3, 3, 3), bool)
    true_hot = ndi.binary_dilation(search & (r_ref >= threshold), cube)
    if lesion_map is not None:
        true_hot |= ndi.binary_dilation(lesion_map != 0, cube)
    for les in lesion_specs(list(lesions)):
        box = _box(pred.shape, np.asarray(les["centre_voxel"]), les["diameter_mm"] / 2 + exclude_mm, sp)
        true_hot[box] |= _distance_mm(box, les["centre_voxel"], sp) <= les["diameter_mm"] / 2 + exclude_mm
    clusters, n = ndi.label(search & (r_pred >= threshold), structure=cube)
    spots: list[dict[str, Any]] = []
    allowed = search & ~true_hot
    if n:
        ids = np.arange(1, n + 1)
        touches_truth = ndi.maximum(true_hot, clusters, ids).astype(bool)
        allowed &= ~np.isin(clusters, ids[touches_truth])
        keep = ids[~touches_truth]
        if keep.size:
            peaks = ndi.maximum(r_pred, clusters, keep)
            where = ndi.maximum_position(r_pred, clusters, keep)
            sizes = np.bincount(clusters.ravel(), minlength=n + 1)[keep]
            order = np.argsort(-np.asarray(peaks))
            spots = [{"voxel": [int(v) for v in where[i]], "peak_contrast": float(peaks[i]), "n_voxels": int(sizes[i])}
                     for i in order]
    peak = float(r_pred[allowed].max()) if allowed.any() else math.nan
    return {"hotspots": len(spots), "hotspot_peak": peak, "spots": spots}


# --- everything for one case ---------------------------------------------------------------------

def pet_metrics(
    pred: np.ndarray,
    spacing: Sequence[float],
    *,
    target: np.ndarray | None = None,
    truth: np.ndarray | None = None,
    regions: np.ndarray | None = None,
    lesion_map: np.ndarray | None = None,
    lesions: Sequence[Mapping[str, Any]] | None = None,
    mask: np.ndarray | None = None,
    data_range: float | None = None,
    size_bins: Sequence[float] = DEFAULT_SIZE_BINS_MM,
    hotspot_threshold: float = DEFAULT_HOTSPOT_THRESHOLD,
    hotspot_window_mm: float = DEFAULT_HOTSPOT_WINDOW_MM,
    gap_mm: float = DEFAULT_GAP_MM,
    width_mm: float = DEFAULT_WIDTH_MM,
    activity: np.ndarray | None = None,
) -> dict[str, Any]:
    """The PET metric set of one case: ``{"metrics": {column: float}, "lesions": [...], "hotspots": [...]}``.

    Columns, each present when its inputs are: ``psnr, ssim, mae, nmse, nrmse, data_range``
    against ``target`` (the full dose); the same with ``_truth`` against ``truth``;
    ``bias_<region>`` (reference = truth, else target) with ``regions`` (codes of
    :func:`pet_region_map`); with ``lesions`` (a lesion list, ``[]`` for a lesion-free case)
    the columns of :func:`crc_summary`; ``hotspots`` and ``hotspot_peak`` (reference = truth,
    else target). ``mask`` (the brain, e.g. ``labels > 0``) applies to the image metrics and
    bounds the hot-spot search; ``data_range`` to the image metrics against both references.
    ``activity`` (the simulation's noise-free activity map) gives each lesion's true contrast
    (see :func:`lesion_crc`); without it the lesion table's ``contrast`` is used.
    """
    pred = _float(pred, "prediction")
    target = None if target is None else _float(target, "target", pred.shape)
    truth = None if truth is None else _float(truth, "truth", pred.shape)
    if mask is not None:
        mask = np.asarray(mask).astype(bool)
        if mask.shape != pred.shape:
            raise VoxdiffError(f"mask shape {mask.shape} differs from prediction shape {pred.shape}")
    regions = _ints(regions, "region map", pred.shape)
    lesion_map = _ints(lesion_map, "lesion map", pred.shape)
    reference = truth if truth is not None else target
    columns: dict[str, float] = {}
    if target is not None:
        columns.update(image_metrics(pred, target, mask=mask, data_range=data_range))
    if truth is not None:
        columns.update({f"{k}_truth": v for k, v in image_metrics(pred, truth, mask=mask, data_range=data_range).items()})
    if regions is not None:
        if reference is None:
            raise VoxdiffError("regional bias needs a reference: give the truth or the full-dose target")
        columns.update(regional_bias(pred, reference, regions, lesion_map))
    per_lesion: list[dict[str, Any]] = []
    if lesions is not None:
        per_lesion = lesion_crc(pred, lesions, spacing, truth=truth, lesion_map=lesion_map, regions=regions,
                                gap_mm=gap_mm, width_mm=width_mm, size_bins=size_bins, activity=activity)
        columns.update(crc_summary(per_lesion, size_bins))
    spots: list[dict[str, Any]] = []
    if reference is not None:
        hs = hotspots(pred, reference, spacing, regions=regions, mask=mask, lesions=lesions or (),
                      lesion_map=lesion_map, threshold=hotspot_threshold, window_mm=hotspot_window_mm, exclude_mm=gap_mm)
        columns["hotspots"] = float(hs["hotspots"])
        columns["hotspot_peak"] = hs["hotspot_peak"]
        spots = hs["spots"]
    return {"metrics": columns, "lesions": per_lesion, "hotspots": spots}
