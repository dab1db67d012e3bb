"""Paired full-dose / low-dose PET simulated on real anatomy (region label maps).

The usual image-domain simulation of PET-denoising work:

1. **Activity.** Each region of a label map gets an FDG-like relative uptake (white matter = 1,
   cortical grey matter 4, striatum/thalamus higher, cerebellar cortex high, CSF and ventricles
   near zero), multiplied per region by a seeded lognormal factor (``region_sd`` ~10 %) so
   subjects differ. Tissue outside the brain but inside the head gets a low uptake (0.15 of WM).
2. **Resolution.** A Gaussian scanner PSF of ``fwhm_mm`` (5 mm default), converted per axis with
   the voxel spacing.
3. **Counts.** The blurred map is scaled to expected full-dose counts per voxel: ``counts`` in
   total, or by default a mean of ``mean_brain_counts`` (200) per labelled brain voxel, i.e.
   about 6 % noise in cortex and 11 % in white matter at full dose for 2 mm voxels.
4. **Noise.** ``full ~ Poisson(expected)``; the low-dose image keeps each full-dose count with
   probability ``dose_fraction`` (binomial thinning, as list-mode decimation makes real low-dose
   data; marginally Poisson with mean ``dose_fraction * expected``) and is divided by
   ``dose_fraction``, so both images are in the same units (full-dose counts per voxel) and
   ``E[low] = E[full]``. No post-smoothing: the noise is kept.

The noise is independent per voxel (no reconstruction-correlated noise, no attenuation,
scatter or randoms): a standard simplification for training and benchmarking denoisers.

Label schemes: ``muse`` (IXI DLMUSE parcellations; region classes are found by name in
``muse_single_labels.csv`` and by the composite regions of ``muse_derived_mapping.csv``:
601 GM, 604 WM, 600 cortical CSF, 509 ventricles, 701 total brain, 702 ICV) and ``brainweb``
(tissue classes 0-9 of the BrainWeb phantom, which already include the head's tissues).
Tissue-probability maps (e.g. the MNI152 GM/WM templates that ship with nilearn) go through
:func:`simulate_tissue_pet`: partial-volume mixing of the same GM/WM/CSF/head uptakes, then the
same PSF, count scale and noise.

The IXI label maps cover only the intracranial volume. The head around it comes from a head
mask: one derived from the subject's T1 (:func:`head_mask_from_image`, used by the CLI when the
T1 sits beside the labels), else the labelled region dilated by ``head_margin_mm`` (10 mm of
skull and scalp; 0 leaves zero activity outside the brain).
"""

from __future__ import annotations

import csv
import math
import zlib
from pathlib import Path
from typing import Any, Mapping, NamedTuple, Sequence

import numpy as np
from scipy import ndimage as ndi

from voxdiff.errors import VoxdiffError
from voxdiff.io import Volume, check_same_geometry
from voxdiff.paths import shared_data_dir

__all__ = [
    "SCHEMES",
    "MUSE_UPTAKE",
    "BRAINWEB_UPTAKE",
    "DEFAULT_MEAN_BRAIN_COUNTS",
    "PetPair",
    "simulate_pet",
    "activity_map",
    "TISSUE_UPTAKE",
    "tissue_activity_map",
    "simulate_tissue_pet",
    "muse_region_classes",
    "load_muse_tables",
    "find_muse_tables",
    "head_mask_from_image",
    "head_mask_from_labels",
    "case_seed",
]

SCHEMES = ("muse", "brainweb")
DEFAULT_MEAN_BRAIN_COUNTS = 200.0
FWHM_TO_SIGMA = 1.0 / (2.0 * math.sqrt(2.0 * math.log(2.0)))

#: Relative FDG uptake per region class (white matter = 1).
MUSE_UPTAKE: dict[str, float] = {
    "cortical_gm": 4.0,
    "striatum": 4.5,          # caudate, putamen
    "accumbens": 4.2,
    "thalamus": 4.2,
    "pallidum": 3.6,
    "cerebellum_gm": 3.6,
    "mesial_temporal": 3.0,   # hippocampus, amygdala: lower than neocortex in FDG
    "basal_forebrain": 3.0,
    "ventral_dc": 2.0,
    "brainstem": 1.8,
    "wm": 1.0,
    "other": 1.0,             # labels not in the tables (e.g. 69, optic chiasm)
    "csf": 0.05,
    "head": 0.15,             # skull, scalp, face and neck inside the head mask
}

#: Relative uptake of the BrainWeb tissue classes.
BRAINWEB_UPTAKE: dict[int, float] = {
    0: 0.0,    # background
    1: 0.05,   # CSF
    2: 4.0,    # grey matter
    3: 1.0,    # white matter
    4: 0.15,   # fat
    5: 0.3,    # muscle / skin
    6: 0.15,   # skin
    7: 0.1,    # skull
    8: 1.0,    # glial matter
    9: 0.15,   # connective tissue
}
_BRAINWEB_BRAIN = (1, 2, 3, 8)

#: Relative uptake of tissue-probability classes (a template's GM/WM/CSF maps), as :data:`MUSE_UPTAKE`.
TISSUE_UPTAKE: dict[str, float] = {
    "gm": MUSE_UPTAKE["cortical_gm"],
    "wm": MUSE_UPTAKE["wm"],
    "csf": MUSE_UPTAKE["csf"],
    "head": MUSE_UPTAKE["head"],
}

# First matching name fragment wins; the rest is classified by the composite regions.
_NAME_RULES: tuple[tuple[tuple[str, ...], str], ...] = (
    (("ventricle",), "csf"),
    (("caudate", "putamen"), "striatum"),
    (("accumbens",), "accumbens"),
    (("thalamus",), "thalamus"),
    (("pallidum",), "pallidum"),
    (("cerebellumexterior", "cerebellarvermal"), "cerebellum_gm"),
    (("hippocampus", "amygdala"), "mesial_temporal"),
    (("basalforebrain",), "basal_forebrain"),
    (("ventraldc",), "ventral_dc"),
    (("brainstem",), "brainstem"),
)
_MUSE_FILES = ("muse_single_labels.csv", "muse_derived_mapping.csv")


class PetPair(NamedTuple):
    """Output of :func:`simulate_pet` (unpacks as ``full, low, activity, params``)."""

    full: Volume
    low: Volume
    activity: Volume
    params: dict[str, Any]


def case_seed(seed: int, case_id: str) -> list[int]:
    """Per-subject seed ``[seed, crc32(case_id)]``: independent of ordering and of ``--limit``."""
    return [int(seed), zlib.crc32(case_id.encode("utf-8"))]


def find_muse_tables(near: str | Path | None = None) -> Path:
    """The folder holding ``muse_single_labels.csv`` and ``muse_derived_mapping.csv``.

    Looked for beside a label file (its folder and the one above it), then in the shared
    IXI data folder.
    """
    candidates: list[Path] = []
    if near is not None:
        near = Path(near)
        base = near if near.is_dir() else near.parent
        candidates += [base, base.parent]
    candidates.append(shared_data_dir() / "ixi-t1-2mm")
    for c in candidates:
        if all((c / f).is_file() for f in _MUSE_FILES):
            return c
    raise VoxdiffError(
        f"the MUSE region tables ({' and '.join(_MUSE_FILES)}) were not found beside "
        f"{near if near is not None else 'the labels'} nor in {candidates[-1]}; pass their folder explicitly"
    )


def load_muse_tables(folder: str | Path) -> tuple[dict[int, str], dict[int, list[int]]]:
    """Read ``{label: name}`` and ``{composite id: [labels]}`` from the MUSE CSVs in ``folder``."""
    folder = Path(folder)
    names: dict[int, str] = {}
    derived: dict[int, list[int]] = {}
    single, mapping = (folder / f for f in _MUSE_FILES)
    try:
        with single.open(newline="") as fh:
            for row in csv.DictReader(fh):
                names[int(row["Index"])] = row["Name"].strip()
        with mapping.open(newline="") as fh:
            for row in csv.reader(fh):
                if row and row[0].strip().isdigit():
                    derived[int(row[0])] = [int(v) for v in row[2:] if v.strip()]
        # The full table also names labels the single-label table omits (1 = cortical CSF).
        if (folder / "muse_all_labels.csv").is_file():
            with (folder / "muse_all_labels.csv").open(newline="") as fh:
                for row in csv.DictReader(fh):
                    names.setdefault(int(row["Index"]), row["Name"].strip())
    except FileNotFoundError as exc:
        raise VoxdiffError(f"{exc.filename}: MUSE region table not found") from exc
    except (KeyError, ValueError) as exc:
        raise VoxdiffError(f"{folder}: unexpected MUSE table format ({exc})") from exc
    for key in (601, 604, 701, 702):
        if key not in derived:
            raise VoxdiffError(f"{mapping}: composite region {key} is missing")
    return names, derived


def muse_region_classes(labels: Sequence[int], names: Mapping[int, str], derived: Mapping[int, Sequence[int]]) -> dict[int, str]:
    """Region class (a key of :data:`MUSE_UPTAKE`) of each non-zero MUSE label value."""
    csf = set(derived.get(509, ())) | set(derived.get(600, ()))
    wm, gm = set(derived[604]), set(derived[601])
    icv_only = set(derived[702]) - set(derived[701])  # e.g. 46, extra-cerebral CSF
    out: dict[int, str] = {}
    for lab in labels:
        lab = int(lab)
        if lab == 0:
            continue
        name = names.get(lab, "").lower().replace("_", "")
        cls = next((c for frags, c in _NAME_RULES if any(f in name for f in frags)), None)
        if cls is None:
            if lab in csf or lab in icv_only:
                cls = "csf"
            elif lab in wm:
                cls = "wm"
            elif lab in gm:
                cls = "cortical_gm"
            else:
                cls = "other"
        out[lab] = cls
    return out


def _integer_labels(label_volume: Volume) -> np.ndarray:
    from voxdiff.data.dataset import check_label_values

    where = str(label_volume.path) if label_volume.path is not None else "label map"
    arr = check_label_values(label_volume, where)
    if arr.min() < 0:
        raise VoxdiffError(f"{where}: a label map must not hold negative values (found {arr.min():g})")
    return arr.astype(np.int64)


def head_mask_from_labels(labels: np.ndarray, spacing: Sequence[float], margin_mm: float = 10.0) -> np.ndarray:
    """Labelled voxels dilated by ``margin_mm`` (an approximate skull and scalp), holes filled."""
    mask = labels > 0
    if margin_mm <= 0 or not mask.any():
        return mask
    # Distance in mm to the nearest labelled voxel: an exact ball dilation for any spacing.
    near = ndi.distance_transform_edt(~mask, sampling=[float(s) for s in spacing]) <= margin_mm
    return ndi.binary_fill_holes(near)


def head_mask_from_image(image: Volume, brain_mask: np.ndarray | None = None) -> np.ndarray:
    """Head mask from an anatomical image with a dark background (e.g. T1 MRI).

    Threshold at 10 % of the 99th percentile, keep the largest connected component, close
    small gaps and fill holes (slice-wise along the last axis, then in 3D) so that dark skull,
    sinuses and CSF are inside; the brain mask, when given, is added.
    """
    arr = image.array
    thr = 0.1 * float(np.percentile(arr, 99))
    mask = arr > thr
    lab, n = ndi.label(mask)
    if n == 0:
        raise VoxdiffError(f"{image.path}: no head found (the image is uniform)")
    sizes = np.bincount(lab.ravel())[1:]
    mask = lab == (int(np.argmax(sizes)) + 1)
    mask = ndi.binary_closing(mask, iterations=2)
    for k in range(mask.shape[2]):
        mask[:, :, k] = ndi.binary_fill_holes(mask[:, :, k])
    mask = ndi.binary_fill_holes(mask)
    if brain_mask is not None:
        mask |= brain_mask.astype(bool)
    return mask


def _lognormal_factors(keys: Sequence[Any], sd: float, rng: np.random.Generator) -> dict[Any, float]:
    if sd <= 0:
        return {k: 1.0 for k in keys}
    # Mean-one lognormal: exp(N(-sd^2/2, sd)).
    draws = np.exp(rng.normal(-0.5 * sd * sd, sd, size=len(keys)))
    return {k: float(v) for k, v in zip(keys, draws)}


def activity_map(
    labels: np.ndarray,
    *,
    scheme: str = "muse",
    head_mask: np.ndarray | None = None,
    region_sd: float = 0.1,
    rng: np.random.Generator | None = None,
    tables_dir: str | Path | None = None,
    uptake: Mapping[Any, float] | None = None,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Relative activity (WM = 1 before variation) for an integer label array.

    Returns ``(activity, brain_mask, info)``; ``info`` lists the class, base uptake and
    random factor of each region. ``uptake`` overrides entries of the scheme's table (class
    names of :data:`MUSE_UPTAKE`, or BrainWeb class numbers). ``head_mask`` adds head tissue
    around a MUSE brain; BrainWeb maps already hold the head's tissues and ignore it.
    """
    rng = rng if rng is not None else np.random.default_rng(0)
    present = [int(v) for v in np.unique(labels)]
    info: dict[str, Any] = {"scheme": scheme, "region_sd": region_sd}
    if scheme == "muse":
        bad = [k for k in (uptake or {}) if k not in MUSE_UPTAKE]
        if bad:
            raise VoxdiffError(f"unknown MUSE uptake class(es) {bad} (known: {', '.join(MUSE_UPTAKE)})")
        table = {**MUSE_UPTAKE, **(uptake or {})}
        names, derived = load_muse_tables(tables_dir if tables_dir is not None else find_muse_tables())
        classes = muse_region_classes(present, names, derived)
        factors = _lognormal_factors([*classes, "head"], region_sd, rng)
        lut = np.zeros(max(present) + 1, np.float32)
        for lab, cls in classes.items():
            lut[lab] = table[cls] * factors[lab]
        activity = lut[labels]
        brain = labels > 0
        if head_mask is not None:
            activity[head_mask & ~brain] = table["head"] * factors["head"]
        info["regions"] = {str(lab): {"name": names.get(lab, "?"), "class": cls, "uptake": table[cls],
                                      "factor": round(factors[lab], 5)} for lab, cls in classes.items()}
        info["head_uptake"] = table["head"] * factors["head"] if head_mask is not None else 0.0
        info["unknown_labels"] = [lab for lab, cls in classes.items() if cls == "other"]
    elif scheme == "brainweb":
        table = {**BRAINWEB_UPTAKE, **{int(k): v for k, v in (uptake or {}).items()}}
        unknown = [v for v in present if v not in table]
        if unknown:
            raise VoxdiffError(f"not a BrainWeb tissue-class map: value(s) {unknown[:5]} are not classes 0-9")
        factors = _lognormal_factors([c for c in present if c != 0], region_sd, rng)
        lut = np.zeros(max(table) + 1, np.float32)
        for c in present:
            lut[c] = table[c] * factors.get(c, 0.0)
        activity = lut[labels]
        brain = np.isin(labels, _BRAINWEB_BRAIN)
        info["regions"] = {str(c): {"uptake": table[c], "factor": round(factors[c], 5)} for c in factors}
        info["unknown_labels"] = []
    else:
        raise VoxdiffError(f"unknown PET simulation scheme '{scheme}' (use {' or '.join(SCHEMES)})")
    if not brain.any():
        raise VoxdiffError("the label map has no brain voxel: nothing to simulate")
    return activity.astype(np.float32), brain, info


def tissue_activity_map(
    gm: np.ndarray,
    wm: np.ndarray,
    csf: np.ndarray | None = None,
    *,
    brain_mask: np.ndarray | None = None,
    head_mask: np.ndarray | None = None,
    region_sd: float = 0.0,
    rng: np.random.Generator | None = None,
    uptake: Mapping[str, float] | None = None,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Relative activity (WM = 1) from tissue-probability maps, e.g. a template's GM and WM.

    Each brain voxel mixes the uptakes of :data:`TISSUE_UPTAKE` by its probabilities
    (partial volume, no labels needed); ``csf`` defaults to ``1 - gm - wm`` clipped to [0, 1]
    inside the brain. ``brain_mask`` defaults to ``gm + wm >= 0.5`` with holes filled (the
    ventricles). Voxels of ``head_mask`` outside the brain get the head uptake. With
    ``region_sd > 0`` each class's uptake is multiplied by a seeded mean-one lognormal factor,
    as :func:`activity_map` does per region. Returns ``(activity, brain_mask, info)``.
    """
    gm = np.clip(np.asarray(gm, dtype=np.float32), 0.0, 1.0)
    wm = np.clip(np.asarray(wm, dtype=np.float32), 0.0, 1.0)
    if gm.shape != wm.shape:
        raise VoxdiffError(f"grey-matter map shape {gm.shape} differs from the white-matter map's {wm.shape}")
    bad = [k for k in (uptake or {}) if k not in TISSUE_UPTAKE]
    if bad:
        raise VoxdiffError(f"unknown tissue uptake class(es) {bad} (known: {', '.join(TISSUE_UPTAKE)})")
    table = {**TISSUE_UPTAKE, **(uptake or {})}
    brain = (np.asarray(brain_mask, dtype=bool) if brain_mask is not None
             else ndi.binary_fill_holes(gm + wm >= 0.5))
    for name, arr in (("brain mask", brain), ("head mask", head_mask), ("CSF map", csf)):
        if arr is not None and np.shape(arr) != gm.shape:
            raise VoxdiffError(f"{name} shape {np.shape(arr)} differs from the tissue maps' {gm.shape}")
    if not brain.any():
        raise VoxdiffError("the tissue maps have no brain voxel: nothing to simulate")
    csf = (np.clip(1.0 - gm - wm, 0.0, 1.0) if csf is None
           else np.clip(np.asarray(csf, dtype=np.float32), 0.0, 1.0))
    rng = rng if rng is not None else np.random.default_rng(0)
    factors = _lognormal_factors(list(table), region_sd, rng)
    up = {k: table[k] * factors[k] for k in table}
    activity = np.where(brain, up["gm"] * gm + up["wm"] * wm + up["csf"] * csf, 0.0).astype(np.float32)
    if head_mask is not None:
        activity[np.asarray(head_mask, dtype=bool) & ~brain] = up["head"]
    info = {"scheme": "tissue", "region_sd": region_sd,
            "regions": {k: {"uptake": table[k], "factor": round(factors[k], 5)} for k in table},
            "head_uptake": up["head"] if head_mask is not None else 0.0}
    return activity, brain, info


def simulate_tissue_pet(
    gm: Volume,
    wm: Volume,
    csf: Volume | None = None,
    *,
    brain_mask: np.ndarray | None = None,
    head_mask: np.ndarray | None = None,
    head_margin_mm: float = 10.0,
    fwhm_mm: float = 5.0,
    dose_fraction: float = 0.05,
    counts: float | None = None,
    mean_brain_counts: float = DEFAULT_MEAN_BRAIN_COUNTS,
    seed: int | Sequence[int] = 0,
    region_sd: float = 0.0,
    uptake: Mapping[str, float] | None = None,
) -> PetPair:
    """:func:`simulate_pet` on tissue-probability maps (e.g. the MNI152 GM/WM templates).

    The activity comes from :func:`tissue_activity_map`; PSF, count scale, Poisson noise and
    binomial thinning are :func:`simulate_pet`'s own code, so with the same ``fwhm_mm``,
    ``dose_fraction`` and ``mean_brain_counts`` the noise level matches label-based data.
    Without ``head_mask`` the brain dilated by ``head_margin_mm`` stands in for skull and scalp
    (0 = zero activity outside the brain). Volumes are returned in ``gm``'s geometry.
    """
    check_settings(fwhm_mm, dose_fraction, counts, mean_brain_counts)
    check_same_geometry(gm, wm, what="white-matter map")
    if csf is not None:
        check_same_geometry(gm, csf, what="CSF map")
    region_seq, noise_seq = np.random.SeedSequence(seed).spawn(2)
    brain = (np.asarray(brain_mask, dtype=bool) if brain_mask is not None
             else ndi.binary_fill_holes(np.clip(gm.array, 0, 1) + np.clip(wm.array, 0, 1) >= 0.5))
    head_source = "given" if head_mask is not None else "none"
    if head_mask is None and head_margin_mm > 0:
        head_mask = head_mask_from_labels(brain.astype(np.int64), gm.spacing, head_margin_mm)
        head_source = f"brain dilated by {head_margin_mm:g} mm"
    activity, brain, info = tissue_activity_map(gm.array, wm.array, None if csf is None else csf.array,
                                                brain_mask=brain, head_mask=head_mask, region_sd=region_sd,
                                                rng=np.random.default_rng(region_seq), uptake=uptake)
    pair = _counts_and_noise(activity, brain, None if head_mask is None else np.asarray(head_mask, dtype=bool), gm,
                             fwhm_mm=fwhm_mm, dose_fraction=dose_fraction, counts=counts,
                             mean_brain_counts=mean_brain_counts, rng=np.random.default_rng(noise_seq))
    params = {**pair.params, "scheme": "tissue",
              "seed": list(seed) if isinstance(seed, (list, tuple)) else int(seed), "head_mask": head_source, **info}
    return pair._replace(params=_ordered(params))


def check_settings(fwhm_mm: float, dose_fraction: float, counts: float | None, mean_brain_counts: float) -> None:
    """Refuse impossible simulation settings (dose, PSF, counts) with one clear message."""
    if not 0.0 < dose_fraction <= 1.0:
        raise VoxdiffError(f"dose fraction must be in (0, 1], got {dose_fraction}")
    if not fwhm_mm >= 0:
        raise VoxdiffError(f"PSF FWHM must be >= 0 mm, got {fwhm_mm}")
    if counts is not None and not counts > 0:
        raise VoxdiffError(f"total counts must be > 0, got {counts}")
    if not mean_brain_counts > 0:
        raise VoxdiffError(f"mean counts per brain voxel must be > 0, got {mean_brain_counts}")


def _float_volume(like: Volume, array: np.ndarray) -> Volume:
    vol = like.with_array(np.asarray(array, dtype=np.float32))
    vol.disk_dtype = np.dtype(np.float32)
    vol.disk_scaling = (1.0, 0.0)
    return vol


def simulate_pet(
    label_volume: Volume,
    *,
    scheme: str = "muse",
    fwhm_mm: float = 5.0,
    dose_fraction: float = 0.05,
    counts: float | None = None,
    mean_brain_counts: float = DEFAULT_MEAN_BRAIN_COUNTS,
    seed: int | Sequence[int] = 0,
    head_mask: np.ndarray | Volume | None = None,
    head_margin_mm: float = 10.0,
    region_sd: float = 0.1,
    tables_dir: str | Path | None = None,
    uptake: Mapping[Any, float] | None = None,
) -> PetPair:
    """Simulate a full-dose and a low-dose PET image on the anatomy of ``label_volume``.

    Args:
        label_volume: integer region labels (MUSE) or tissue classes (BrainWeb).
        scheme: ``"muse"`` or ``"brainweb"``.
        fwhm_mm: Gaussian PSF full width at half maximum in mm (0 = no blur).
        dose_fraction: low-dose fraction of the full-dose counts, in (0, 1].
        counts: total expected full-dose counts; default: ``mean_brain_counts`` per brain voxel.
        seed: seed of a local numpy Generator (an int or a list of ints, see :func:`case_seed`).
        head_mask: boolean head mask in the label geometry (e.g. :func:`head_mask_from_image`);
            when None, the MUSE labels dilated by ``head_margin_mm`` (0 = zero outside the brain).
            Unused for BrainWeb, whose classes already cover the head.
        region_sd: sd of the per-region lognormal uptake factor (0 = the table's values).
        tables_dir: folder of the MUSE CSVs (default: found beside the labels or in shared data).
        uptake: overrides of the scheme's uptake table.

    Returns:
        ``(full, low, activity, params)``: float32 volumes in the label map's geometry, in
        full-dose counts per voxel (``activity`` is the noise-free expected full-dose image
        before the PSF, in the same units); ``params`` records every setting, the per-region
        factors and ``psnr_low_vs_full_db`` (data range = full-dose maximum inside the head,
        MSE over the head).
    """
    if scheme not in SCHEMES:
        raise VoxdiffError(f"unknown PET simulation scheme '{scheme}' (use {' or '.join(SCHEMES)})")
    check_settings(fwhm_mm, dose_fraction, counts, mean_brain_counts)
    labels = _integer_labels(label_volume)
    if scheme == "muse" and tables_dir is None:
        tables_dir = find_muse_tables(label_volume.path)
    head_source = "none"
    mask: np.ndarray | None = None
    if scheme == "brainweb":
        head_source = "phantom tissue classes"  # BrainWeb maps already hold the head's tissues
    elif isinstance(head_mask, Volume):
        check_same_geometry(label_volume, head_mask, what="head mask")
        mask, head_source = head_mask.array > 0, "given"
    elif head_mask is not None:
        mask = np.asarray(head_mask, dtype=bool)
        if mask.shape != labels.shape:
            raise VoxdiffError(f"head mask shape {mask.shape} differs from the label map's {labels.shape}")
        head_source = "given"
    elif head_margin_mm > 0:
        mask = head_mask_from_labels(labels, label_volume.spacing, head_margin_mm)
        head_source = f"labels dilated by {head_margin_mm:g} mm"
    region_seq, noise_seq = np.random.SeedSequence(seed).spawn(2)
    activity, brain, info = activity_map(labels, scheme=scheme, head_mask=mask, region_sd=region_sd,
                                         rng=np.random.default_rng(region_seq), tables_dir=tables_dir,
                                         uptake=uptake)
    pair = _counts_and_noise(activity, brain, mask, label_volume, fwhm_mm=fwhm_mm, dose_fraction=dose_fraction,
                             counts=counts, mean_brain_counts=mean_brain_counts,
                             rng=np.random.default_rng(noise_seq))
    params: dict[str, Any] = {
        "scheme": scheme,
        **pair.params,
        "seed": list(seed) if isinstance(seed, (list, tuple)) else int(seed),
        "head_mask": head_source,
        **info,
    }
    return pair._replace(params=_ordered(params))


def _ordered(params: dict[str, Any]) -> dict[str, Any]:
    """Settings first, then counts, then noise and PSNR: the order the JSON files have always had."""
    order = ("scheme", "fwhm_mm", "psf_sigma_voxels", "spacing_mm", "dose_fraction", "seed", "counts_total_expected",
             "counts_total_full", "counts_total_low", "mean_brain_counts", "counts_scale", "brain_voxels",
             "head_voxels", "head_mask", "units", "noise_model", "psnr_low_vs_full_db", "psnr_data_range",
             "psnr_region")
    return {**{k: params[k] for k in order if k in params}, **{k: v for k, v in params.items() if k not in order}}


def _counts_and_noise(activity: np.ndarray, brain: np.ndarray, head_mask: np.ndarray | None, like: Volume, *,
                      fwhm_mm: float, dose_fraction: float, counts: float | None, mean_brain_counts: float,
                      rng: np.random.Generator) -> PetPair:
    """Steps 2-4 of the module doc (PSF, count scale, Poisson + thinning) on a relative activity map."""
    spacing = np.asarray(like.spacing, dtype=np.float64)
    sigma_vox = (fwhm_mm * FWHM_TO_SIGMA / spacing) if fwhm_mm > 0 else np.zeros(3)
    # Zero activity outside the field of view: the head fits inside it.
    blurred = ndi.gaussian_filter(activity, sigma=sigma_vox, mode="constant", cval=0.0) if fwhm_mm > 0 else activity
    blurred = np.maximum(blurred, 0.0)
    scale = counts / float(blurred.sum()) if counts is not None else mean_brain_counts / float(blurred[brain].mean())
    expected = blurred.astype(np.float64) * scale
    full = rng.poisson(expected)
    low = rng.binomial(full, dose_fraction) / dose_fraction
    head = activity > 0
    if head_mask is not None:
        head |= head_mask
    from voxdiff.metrics import psnr

    data_range = float(full[head].max())
    value = psnr(low.astype(np.float32), full.astype(np.float32), data_range, head) if data_range > 0 else float("nan")
    params: dict[str, Any] = {
        "fwhm_mm": float(fwhm_mm),
        "psf_sigma_voxels": [round(float(s), 5) for s in sigma_vox],
        "spacing_mm": [float(s) for s in spacing],
        "dose_fraction": float(dose_fraction),
        "counts_total_expected": float(expected.sum()),
        "counts_total_full": int(full.sum()),
        "counts_total_low": int(round(float(low.sum()) * dose_fraction)),
        "mean_brain_counts": float(expected[brain].mean()),
        "counts_scale": float(scale),
        "brain_voxels": int(brain.sum()),
        "head_voxels": int(head.sum()),
        "units": "full-dose counts per voxel (low-dose counts divided by dose_fraction)",
        "noise_model": "full ~ Poisson(expected); low = Binomial(full, dose_fraction) / dose_fraction; no post-smoothing",
        "psnr_low_vs_full_db": round(value, 4),
        "psnr_data_range": data_range,
        "psnr_region": "head (non-zero activity or head mask)",
    }
    return PetPair(
        full=_float_volume(like, full),
        low=_float_volume(like, low),
        activity=_float_volume(like, activity * scale),
        params=params,
    )
