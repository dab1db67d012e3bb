"""Spherical hot lesions inserted into an activity map, and the per-case lesion record.

Placement (seeded): lesions are placed largest first; each draws a region class (``GM`` =
cortical grey matter, ``WM`` = white matter, ``deep_gm`` = striatum, thalamus, pallidum,
accumbens) among those with room left, then a centre voxel of that class whose distance to the
outside of the labelled intracranial volume is at least ``radius + margin_mm`` and whose
distance to every placed lesion's centre is at least the sum of radii plus ``margin_mm``, so
spheres lie fully inside the brain and never touch. A cortical sphere may include sulcal CSF.

Insertion: the partial-volume fraction ``f`` of the sphere in each voxel is found by
supersampling (4^3 points per voxel); the lesion activity is ``contrast x background``, where
``background`` is the mean of the activity the sphere replaces (before any blur), and each voxel
becomes ``(1 - f) a + f contrast background``. The lesion id map marks voxels with ``f >= 0.5``
(and always the centre voxel).

Lesion JSON (read by the PET metrics; keys are only ever added):
``{"case", "lesion_free", "lesions": [{"id", "centre_voxel", "centre_mm", "diameter_mm",
"contrast", "background_activity", "region"}]}``.
"""

from __future__ import annotations

import zlib
from typing import Any, Mapping, Sequence

import numpy as np
from scipy import ndimage as ndi

from voxdiff.errors import VoxdiffError

__all__ = ["LESION_REGIONS", "is_lesion_free", "check_lesion_settings", "place_lesions", "insert_lesions",
           "lesion_record"]

LESION_REGIONS = ("GM", "WM", "deep_gm")
_SUPERSAMPLE = 4


def is_lesion_free(seed: int, case: str, fraction: float) -> bool:
    """Whether a case gets no lesion: a draw from ``(seed, crc32(case))``, independent of every other draw."""
    u = np.random.default_rng([int(seed), zlib.crc32(case.encode("utf-8")), 0x1E5]).random()
    return bool(u < fraction)


def check_lesion_settings(n: int, diameters: Sequence[float], contrast: Sequence[float], free_fraction: float) -> None:
    """Refuse impossible lesion settings with one sentence naming the option."""
    if n < 0:
        raise VoxdiffError(f"--lesions must be >= 0, got {n}")
    if n and not diameters:
        raise VoxdiffError("--lesion-diameters needs at least one diameter")
    if any(not 2.0 <= d <= 40.0 for d in diameters):
        raise VoxdiffError(f"--lesion-diameters must lie in 2..40 mm, got {list(diameters)}")
    if len(contrast) not in (1, 2) or any(c <= 1.0 for c in contrast) or (len(contrast) == 2 and contrast[0] > contrast[1]):
        raise VoxdiffError(f"--lesion-contrast must be one ratio > 1 or a range LOW,HIGH with 1 < LOW <= HIGH, got {list(contrast)}")
    if not 0.0 <= free_fraction <= 1.0:
        raise VoxdiffError(f"--lesion-free-fraction must lie in [0, 1], got {free_fraction}")


def place_lesions(regions: Mapping[str, np.ndarray], icv: np.ndarray, spacing: Sequence[float], *, n: int,
                  diameters: Sequence[float], contrast: Sequence[float], rng: np.random.Generator,
                  margin_mm: float = 2.0) -> tuple[list[dict[str, Any]], list[float]]:
    """Centres, diameters, contrasts and regions of up to ``n`` lesions; also the diameters not placed.

    ``regions`` maps a name of :data:`LESION_REGIONS` to its voxel mask; diameters cycle through
    ``diameters``; contrast is uniform in ``[low, high]`` (or fixed).
    """
    spacing = np.asarray(spacing, float)
    depth = ndi.distance_transform_edt(np.asarray(icv, bool), sampling=spacing)
    wanted = sorted((float(diameters[i % len(diameters)]) for i in range(n)), reverse=True)
    placed: list[dict[str, Any]] = []
    missed: list[float] = []
    coords = {name: np.argwhere(mask) for name, mask in regions.items() if np.any(mask)}
    for diameter in wanted:
        r = diameter / 2.0
        options = {}
        for name, pts in coords.items():
            ok = depth[tuple(pts.T)] >= r + margin_mm
            for other in placed:
                gap = np.sqrt((((pts - other["centre_voxel"]) * spacing) ** 2).sum(1))
                ok &= gap >= r + other["diameter_mm"] / 2.0 + margin_mm
            if ok.any():
                options[name] = pts[ok]
        if not options:
            missed.append(diameter)
            continue
        names = sorted(options)
        name = names[int(rng.integers(len(names)))]
        centre = options[name][int(rng.integers(len(options[name])))]
        c = float(contrast[0]) if len(contrast) == 1 else float(rng.uniform(contrast[0], contrast[1]))
        placed.append({"centre_voxel": centre.astype(float), "diameter_mm": diameter, "contrast": c, "region": name})
    return placed, missed


def _sphere_fraction(shape: Sequence[int], centre: np.ndarray, radius_mm: float, spacing: np.ndarray
                     ) -> tuple[tuple[slice, ...], np.ndarray]:
    """(bounding-box slices, partial-volume fraction inside it) of a sphere, by supersampling."""
    half = np.ceil(radius_mm / spacing).astype(int) + 1
    lo = np.maximum(np.floor(centre).astype(int) - half, 0)
    hi = np.minimum(np.floor(centre).astype(int) + half + 1, np.asarray(shape))
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    sub = (np.arange(_SUPERSAMPLE) + 0.5) / _SUPERSAMPLE - 0.5
    axes = [((np.arange(a, b)[:, None] + sub[None, :]).ravel() - c) * s
            for a, b, c, s in zip(lo, hi, centre, spacing)]
    d2 = axes[0][:, None, None] ** 2 + axes[1][None, :, None] ** 2 + axes[2][None, None, :] ** 2
    inside = (d2 <= radius_mm**2).astype(np.float32)
    shp = [b - a for a, b in zip(lo, hi)]
    frac = inside.reshape(shp[0], _SUPERSAMPLE, shp[1], _SUPERSAMPLE, shp[2], _SUPERSAMPLE).mean(axis=(1, 3, 5))
    return box, frac


def insert_lesions(activity: np.ndarray, lesions: list[dict[str, Any]], spacing: Sequence[float]
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Activity with the lesions and the lesion id map (uint16, 0 = none, ids 1..n in list order).

    Adds ``id`` and ``background_activity`` to each lesion dict.
    """
    spacing = np.asarray(spacing, float)
    out = np.array(activity, dtype=np.float32, copy=True)
    ids = np.zeros(activity.shape, np.uint16)
    for k, les in enumerate(lesions, 1):
        box, frac = _sphere_fraction(activity.shape, np.asarray(les["centre_voxel"]), les["diameter_mm"] / 2.0, spacing)
        before = activity[box].astype(np.float64)
        background = float((before * frac).sum() / max(frac.sum(), 1e-12))
        if background <= 0:
            raise VoxdiffError(f"lesion {k} at voxel {les['centre_voxel'].tolist()} has no background activity")
        value = les["contrast"] * background
        out[box] = ((1.0 - frac) * before + frac * value).astype(np.float32)
        region_ids = ids[box]
        region_ids[(frac >= 0.5) & (region_ids == 0)] = k
        ids[tuple(int(round(c)) for c in les["centre_voxel"])] = k
        les["id"] = k
        les["background_activity"] = background
    return out, ids


def lesion_record(case: str, lesion_free: bool, lesions: list[dict[str, Any]], affine: np.ndarray,
                  **extra: Any) -> dict[str, Any]:
    """The lesion JSON of the module doc (``centre_mm`` through ``affine``); ``extra`` keys are added."""
    rows = []
    for les in lesions:
        c = np.asarray(les["centre_voxel"], float)
        mm = (np.asarray(affine, float) @ np.append(c, 1.0))[:3]
        rows.append({"id": int(les["id"]), "centre_voxel": [float(v) for v in c], "centre_mm": [float(v) for v in mm],
                     "diameter_mm": float(les["diameter_mm"]), "contrast": float(les["contrast"]),
                     "background_activity": float(les["background_activity"]), "region": str(les["region"])})
    return {"case": case, "lesion_free": bool(lesion_free), "lesions": rows, **extra}
