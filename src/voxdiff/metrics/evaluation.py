"""Scoring prediction files against reference files: pairing, per-case metrics, summaries, CSV/JSON.

The library behind ``voxdiff evaluate``, usable without the command line::

    from voxdiff.metrics import PetSettings, evaluate_pairs, find_pairs

    pairs = find_pairs(pred_dir="out/", target_dir="data/t2/")
    report = evaluate_pairs(pairs)                       # PSNR, SSIM, MAE, NMSE, NRMSE per case
    report.summary["psnr"]["mean"], report.to_csv()

    seg = evaluate_pairs(find_pairs(pred="p.nii.gz", target="t.nii.gz"), kind="segmentation", labels=[1, 2])

    pet = find_pairs(pred_dir="denoised/", target_dir="sim/", target_suffix="_full",
                     truth="sim/", lesions="sim/", regions="labels/")
    report = evaluate_pairs(pet, pet=PetSettings(size_bins=(4, 8, 16)))

* :func:`find_pairs`: prediction / target (/ mask, PET truth, MUSE regions, lesion map) files
  of each case, from two files, two folders matched by case name, or a case manifest.
* :func:`evaluate_pairs`: loads each pair (shape and affine must agree), scores it with
  :func:`~voxdiff.metrics.image.image_metrics`, :func:`~voxdiff.metrics.segmentation.segmentation_metrics`
  or :func:`~voxdiff.metrics.pet.pet_metrics`, and returns an :class:`EvaluationReport` (rows per case,
  mean/std summary, the conventions used, PET per-lesion detail) that renders the CSV and JSON files.

Every bad input raises :class:`~voxdiff.errors.VoxdiffError` with one sentence naming the file or the
option (the messages use the ``voxdiff evaluate`` option names). Conventions: ``docs/metrics.md``.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from voxdiff.errors import VoxdiffError
from voxdiff.io import SUPPORTED_SUFFIXES, Volume, check_same_geometry, load_volume
from voxdiff.io.atomic import case_name, volume_files_by_case
from voxdiff.metrics import pet as _pet
from voxdiff.metrics.image import IMAGE_METRICS, SSIM_SIGMA, SSIM_WINDOW, image_metrics
from voxdiff.metrics.segmentation import SEG_METRICS, segmentation_metrics
from voxdiff.metrics.summary import summarize

__all__ = ["EvaluationReport", "Pair", "Pairing", "PetSettings", "check_metric_options", "evaluate_pairs",
           "find_pairs", "lesion_table_path"]

PathLike = str | os.PathLike
#: Hot spots kept per case in the details (the strongest first; the count is complete).
MAX_DETAIL_SPOTS = 50
_COMPANIONS = ("truth", "regions", "lesions")


@dataclass
class Pair:
    """The files of one case: prediction, reference, optional mask and PET companions."""

    case: str
    pred: Path
    target: Path
    mask: Path | None = None
    #: Case ids to look companions (truth, regions, lesions) up by, most specific first.
    keys: tuple[str, ...] = ()
    truth: Path | None = None
    regions: Path | None = None
    lesions: Path | None = None

    def __post_init__(self) -> None:
        for name in ("pred", "target", "mask", *_COMPANIONS):
            value = getattr(self, name)
            if value is not None and not isinstance(value, Path):
                setattr(self, name, Path(value))
        if not self.keys:
            self.keys = (self.case,)


@dataclass
class Pairing:
    """What :func:`find_pairs` found: the pairs, and the folder targets that no prediction matched."""

    pairs: list[Pair]
    unscored_targets: list[str] = field(default_factory=list)

    def __iter__(self) -> Iterator[Pair]:
        return iter(self.pairs)

    def __len__(self) -> int:
        return len(self.pairs)


@dataclass(frozen=True)
class PetSettings:
    """PET metric options: CRC size bins (lesion diameters, mm), hot-spot contrast, MUSE table folder."""

    size_bins: tuple[float, ...] = _pet.DEFAULT_SIZE_BINS_MM
    hotspot_threshold: float = _pet.DEFAULT_HOTSPOT_THRESHOLD
    #: Folder of the MUSE CSV tables; None: beside each label map, else the shared IXI folder.
    muse_tables: Path | None = None

    def __post_init__(self) -> None:
        if not (math.isfinite(self.hotspot_threshold) and self.hotspot_threshold > 1):
            raise VoxdiffError(f"--hotspot-threshold is a contrast above 1, got {self.hotspot_threshold}")
        bins = tuple(float(b) for b in self.size_bins)
        if not bins or not all(math.isfinite(b) and b > 0 for b in bins):
            raise VoxdiffError(f"--size-bins must be positive diameters in mm such as 4,8,16, got {list(bins)}")
        object.__setattr__(self, "size_bins", tuple(dict.fromkeys(bins)))
        if self.muse_tables is not None and not isinstance(self.muse_tables, Path):
            object.__setattr__(self, "muse_tables", Path(self.muse_tables))


# ----------------------------------------------------------------------------------- pairing
class _Companion(NamedTuple):
    """Where one PET companion comes from: a file or folder (+ file-name suffix), or a manifest role."""

    spec: Path | None
    suffix: str
    role: str | None
    option: str


def _as_path(value: PathLike | None) -> Path | None:
    return None if value is None else Path(value)


def _volumes_in(folder: Path, option: str) -> dict[str, Path]:
    """The volume files of a folder keyed by case name (dot files, other files and sub-folders skipped)."""
    if not folder.is_dir():
        raise VoxdiffError(f"{folder}: {option} is not an existing folder")
    return volume_files_by_case(folder, SUPPORTED_SUFFIXES)


def _case_keys(stem: str) -> tuple[str, ...]:
    """``a_b_c`` -> ``(a_b_c, a_b, a)``: a prediction ``<case>_<anything>`` belongs to the longest known ``<case>``."""
    parts = stem.split("_")
    return tuple("_".join(parts[:k]) for k in range(len(parts), 0, -1))


def _by_case(found: dict[str, Path], suffix: str) -> dict[str, Path]:
    """Volumes keyed by case id: the file stem without ``suffix`` (stems not ending with it are skipped)."""
    if not suffix:
        return dict(found)
    return {stem[: -len(suffix)]: p for stem, p in found.items() if stem.endswith(suffix) and len(stem) > len(suffix)}


def _pairs_from_dirs(pred_dir: Path, target_dir: Path, mask_dir: Path | None,
                     target_suffix: str) -> tuple[list[Pair], list[str]]:
    preds = _volumes_in(pred_dir, "--pred-dir")
    if not preds:
        raise VoxdiffError(f"{pred_dir}: no volume files ({', '.join(SUPPORTED_SUFFIXES)})")
    targets = _by_case(_volumes_in(target_dir, "--target-dir"), target_suffix)
    masks = _volumes_in(mask_dir, "--mask-dir") if mask_dir is not None else {}
    pairs: list[Pair] = []
    owner: dict[str, Path] = {}
    for stem, p in preds.items():
        keys = _case_keys(stem)
        case = next((k for k in keys if k in targets), None)
        if case is None:
            raise VoxdiffError(f"{p}: no target named '{stem}{target_suffix}.*' in {target_dir}"
                               + (" (nor for a shorter '_'-prefix of the name)" if len(keys) > 1 else "")
                               + ("" if target_suffix else "; use --target-suffix if targets are named <case><suffix>"))
        if case in owner:
            raise VoxdiffError(f"{pred_dir}: predictions {owner[case].name} and {p.name} both match target case '{case}'")
        owner[case] = p
        if mask_dir is not None and case not in masks:
            raise VoxdiffError(f"{p}: no mask named '{case}.*' in {mask_dir}")
        pairs.append(Pair(case, p, targets[case], masks.get(case), keys=(case,)))
    return pairs, sorted(set(targets) - set(owner))


def _pairs_from_manifest(manifest: Path, pred_role: str, target_role: str, mask_role: str | None,
                         split: str | None, companions: dict[str, _Companion]) -> list[Pair]:
    from voxdiff.data.manifest import load_manifest

    extra = [r for r in (mask_role, *(c.role for c in companions.values())) if r]
    cases = load_manifest(manifest, roles=list(dict.fromkeys([pred_role, target_role, *extra])))
    if split is not None:
        cases = [c for c in cases if c.meta.get("split") == split]
        if not cases:
            raise VoxdiffError(f"{manifest}: no case has split '{split}'")

    def role(c, name):
        return c.path(name) if name else None

    return [Pair(c.id, c.path(pred_role), c.path(target_role), role(c, mask_role), keys=(c.id,),
                 **{a: role(c, companions[a].role) for a in _COMPANIONS})
            for c in cases]


def _attach_companions(pairs: list[Pair], companions: dict[str, _Companion]) -> None:
    """Fill each pair's truth / regions / lesions from a file, or from a folder by case id + suffix."""
    listings: dict[Path, dict[str, Path]] = {}
    for attr, (spec, suffix, _, option) in companions.items():
        if spec is None:
            continue
        if spec.is_file():
            for pair in pairs:
                setattr(pair, attr, spec)
            continue
        if not spec.is_dir():
            raise VoxdiffError(f"{spec}: {option} is neither an existing file nor a folder")
        if spec not in listings:
            listings[spec] = _volumes_in(spec, option)
        found = listings[spec]
        for pair in pairs:
            stem = next((f"{k}{suffix}" for k in pair.keys if f"{k}{suffix}" in found), None)
            if stem is None:
                raise VoxdiffError(f"{spec}: no {option} volume named '{pair.keys[0]}{suffix}.*' for case "
                                   f"{pair.case} ({pair.pred.name}; set {option}-suffix if the names differ)")
            setattr(pair, attr, found[stem])


def find_pairs(
    *,
    pred: PathLike | None = None,
    target: PathLike | None = None,
    mask: PathLike | None = None,
    pred_dir: PathLike | None = None,
    target_dir: PathLike | None = None,
    target_suffix: str = "",
    mask_dir: PathLike | None = None,
    manifest: PathLike | None = None,
    pred_role: str = "pred",
    target_role: str = "target",
    mask_role: str | None = None,
    split: str | None = None,
    truth: PathLike | None = None,
    truth_suffix: str = "_truth",
    truth_role: str | None = None,
    regions: PathLike | None = None,
    regions_suffix: str = "",
    regions_role: str | None = None,
    lesions: PathLike | None = None,
    lesions_suffix: str = "_lesions",
    lesions_role: str | None = None,
) -> Pairing:
    """The files of each case to score, from exactly one of three sources.

    * ``pred`` + ``target`` (+ ``mask``): one pair, case = the prediction's file name without suffix.
    * ``pred_dir`` + ``target_dir`` (+ ``mask_dir``): the targets are ``<case><target_suffix>.*``; a
      prediction ``<stem>.*`` belongs to case ``<stem>``, else to the longest ``_``-prefix of it that
      is a case; masks are ``<case>.*``. Targets without a prediction go to ``unscored_targets``.
    * ``manifest`` (``voxdiff.data.load_manifest``): the columns ``pred_role``, ``target_role``
      (, ``mask_role``), optionally only the cases whose ``split`` column equals ``split``.

    PET companions ``truth`` / ``regions`` / ``lesions`` are each a file (used for every case), a
    folder searched for ``<case><suffix>.*`` (in one-pair mode the ``_``-prefixes of the prediction's
    then the target's name are tried), or with a manifest a column (``*_role``). Only paths are
    resolved here; the volumes are read by :func:`evaluate_pairs`.
    """
    modes = [m for m, on in (("--pred/--target", pred is not None or target is not None),
                             ("--pred-dir/--target-dir", pred_dir is not None or target_dir is not None),
                             ("--manifest", manifest is not None)) if on]
    if len(modes) != 1:
        raise VoxdiffError("give exactly one of --pred/--target, --pred-dir/--target-dir or --manifest"
                           + (f" (got {' and '.join(modes)})" if modes else ""))
    if split is not None and manifest is None:
        raise VoxdiffError("--split applies to --manifest only")
    if manifest is None and any((truth_role, regions_role, lesions_role)):
        raise VoxdiffError("--truth-role/--regions-role/--lesions-role apply to --manifest only")
    companions = {"truth": _Companion(_as_path(truth), truth_suffix, truth_role, "--truth"),
                  "regions": _Companion(_as_path(regions), regions_suffix, regions_role, "--regions"),
                  "lesions": _Companion(_as_path(lesions), lesions_suffix, lesions_role, "--lesions")}
    for c in companions.values():
        if c.spec is not None and c.role is not None:
            raise VoxdiffError(f"give {c.option} or {c.option}-role, not both")
    if target_suffix and target_dir is None:
        raise VoxdiffError("--target-suffix applies to --target-dir only")

    unmatched: list[str] = []
    if manifest is not None:
        pairs = _pairs_from_manifest(Path(manifest), pred_role, target_role, mask_role, split, companions)
    elif pred_dir is not None or target_dir is not None:
        if pred_dir is None or target_dir is None:
            raise VoxdiffError("--pred-dir and --target-dir go together")
        if mask is not None:
            raise VoxdiffError("use --mask-dir (not --mask) with --pred-dir/--target-dir")
        pairs, unmatched = _pairs_from_dirs(Path(pred_dir), Path(target_dir), _as_path(mask_dir), target_suffix)
    else:
        if pred is None or target is None:
            raise VoxdiffError("--pred and --target go together")
        if mask_dir is not None:
            raise VoxdiffError("use --mask (not --mask-dir) with --pred/--target")
        pred, target = Path(pred), Path(target)
        keys = tuple(dict.fromkeys(_case_keys(case_name(pred)) + _case_keys(case_name(target))))
        pairs = [Pair(case_name(pred), pred, target, _as_path(mask), keys=keys)]
    _attach_companions(pairs, companions)
    return Pairing(pairs, unmatched)


# ----------------------------------------------------------------------------------- scoring
def check_metric_options(kind: str, *, labels_given: bool = False, data_range: float | None = None,
                         pet: bool = False, masked: bool = False) -> None:
    """Raise on a metric-option combination that :func:`evaluate_pairs` cannot honour.

    ``kind`` is ``"image"`` or ``"segmentation"``; ``masked``: some pair has (or the user gave) a mask.
    """
    if kind not in ("image", "segmentation"):
        raise VoxdiffError(f"kind must be 'image' or 'segmentation', got {kind!r}")
    seg = kind == "segmentation"
    if seg and (masked or data_range is not None):
        raise VoxdiffError("--mask/--mask-dir/--mask-role and --data-range apply to image metrics, not to --seg")
    if seg and pet:
        raise VoxdiffError("--pet/--truth/--regions/--lesions compute PET image metrics and cannot be combined with --seg")
    if labels_given and not seg:
        raise VoxdiffError("--labels applies to --seg only (PET region labels go to --regions)")
    if data_range is not None and not (math.isfinite(data_range) and data_range > 0):
        raise VoxdiffError(f"--data-range must be a positive number, got {data_range}")


def lesion_table_path(lesion_map: Path) -> Path:
    """The lesion table beside a lesion map: ``<case>_lesions.nii.gz`` -> ``<case>_lesions.json``."""
    return lesion_map.with_name(case_name(lesion_map) + ".json")


def _load_pair(pair: Pair) -> tuple[Volume, Volume]:
    target = load_volume(pair.target, role="target")
    pred = load_volume(pair.pred, role="prediction")
    check_same_geometry(target, pred, what=f"case {pair.case}")
    return target, pred


def _load_like(path: Path, like: Volume, role: str, what: str) -> np.ndarray:
    """A companion volume's array, after checking that it shares ``like``'s shape and affine."""
    vol = load_volume(path, role=role)
    check_same_geometry(like, vol, what=what)
    return vol.array


def _load_mask(pair: Pair, target: Volume) -> np.ndarray | None:
    if pair.mask is None:
        return None
    mask = _load_like(pair.mask, target, "mask", f"case {pair.case}") != 0
    if not mask.any():
        raise VoxdiffError(f"{pair.mask} (mask): the mask is empty (no nonzero voxel)")
    return mask


def _score_pair(pair: Pair, seg: bool, labels: list[int] | None, data_range: float | None) -> dict[str, float]:
    target, pred = _load_pair(pair)
    mask = _load_mask(pair, target)
    try:
        if seg:
            per_label = segmentation_metrics(pred.array, target.array, labels=labels, spacing=target.spacing)
            return {f"{m}_{lab}": v[m] for lab, v in per_label.items() for m in SEG_METRICS}
        return image_metrics(pred.array, target.array, mask=mask, data_range=data_range)
    except VoxdiffError as exc:
        raise VoxdiffError(f"case {pair.case} ({pair.pred} vs {pair.target}): {exc}") from None


def _simulated_activity(lesion_map_path: Path, like: Volume) -> np.ndarray | None:
    """The simulation's noise-free activity map beside a lesion map (``<case>_lesions`` -> ``<case>_activity``).

    ``voxdiff simulate-pet`` writes it; with it each lesion's CRC divides by the true lesion /
    background ratio measured in the same ROI and shell (NEMA's actual activity ratio).
    """
    stem = case_name(lesion_map_path)
    if not stem.endswith("_lesions"):
        return None
    for suffix in SUPPORTED_SUFFIXES:
        cand = lesion_map_path.parent / f"{stem[: -len('_lesions')]}_activity{suffix}"
        if cand.is_file():
            return _load_like(cand, like, "activity", f"{cand}")
    return None


def _score_pet_pair(pair: Pair, data_range: float | None, opts: PetSettings,
                    tables: dict[Path, Path]) -> tuple[dict[str, float], dict]:
    """PET metric columns and per-lesion / hot-spot detail of one case (``tables``: MUSE folders found so far)."""
    target, pred = _load_pair(pair)
    mask = _load_mask(pair, target)
    what = f"case {pair.case}"
    truth = regions = lesion_map = lesions = activity = None
    if pair.truth is not None:
        truth = _load_like(pair.truth, target, "truth", what)
    if pair.regions is not None:
        from voxdiff.sim.pet import find_muse_tables

        labels = _load_like(pair.regions, target, "region labels", what)
        folder = opts.muse_tables or tables.setdefault(pair.regions.parent, find_muse_tables(pair.regions))
        try:
            regions = _pet.pet_region_map(labels, folder)
        except VoxdiffError as exc:
            raise VoxdiffError(f"{pair.regions} (--regions): {exc}") from None
        if mask is None:
            mask = labels > 0  # the labelled intracranial volume, as the PET benchmarks
    if pair.lesions is not None:
        lesion_map = _load_like(pair.lesions, target, "lesion map", what)
        lesions = _pet.read_lesion_json(lesion_table_path(pair.lesions))["lesions"]
        activity = _simulated_activity(pair.lesions, target)
    try:
        out = _pet.pet_metrics(pred.array, target.spacing, target=target.array, truth=truth, regions=regions,
                               lesion_map=lesion_map, lesions=lesions, mask=mask, data_range=data_range,
                               size_bins=opts.size_bins, hotspot_threshold=opts.hotspot_threshold,
                               activity=activity)
    except VoxdiffError as exc:
        where = ", ".join(str(p) for p in (pair.pred, pair.truth or pair.target, pair.lesions) if p is not None)
        raise VoxdiffError(f"case {pair.case} ({where}): {exc}") from None
    detail = {"case": pair.case, "pred": str(pair.pred), "n_hotspots": len(out["hotspots"]),
              "lesion_table": str(lesion_table_path(pair.lesions)) if pair.lesions is not None else None,
              "lesions": out["lesions"], "hotspots": out["hotspots"][:MAX_DETAIL_SPOTS]}
    return out["metrics"], detail


def _pet_keys(has_truth: bool, has_regions: bool, has_lesions: bool, bins: tuple[float, ...]) -> list[str]:
    keys = [*IMAGE_METRICS, "data_range"]
    if has_truth:
        keys += [f"{k}_truth" for k in (*IMAGE_METRICS, "data_range")]
    if has_regions:
        keys += [f"bias_{r}" for r in _pet.PET_REGIONS]
    if has_lesions:
        keys += list(_pet.crc_summary([], bins))
    return keys + ["hotspots", "hotspot_peak"]


def _pet_conventions(bins: tuple[float, ...], threshold: float, has_mask: bool, has_regions: bool) -> dict:
    return {
        "pet_mask": ("--mask" if has_mask else "MUSE labels > 0" if has_regions else "none")
                    + " for the image metrics and the hot-spot search",
        "bias": "100 (mean pred - mean ref) / mean ref per region, lesion voxels excluded; ref = truth, else target",
        "crc": f"(mean roi / mean background - 1) / (contrast - 1); background shell r + {_pet.DEFAULT_GAP_MM:g} to "
               f"r + {_pet.DEFAULT_GAP_MM + _pet.DEFAULT_WIDTH_MM:g} mm from the centre, same tissue (its voxels > "
               f"{_pet.DEFAULT_EDGE_MM:g} mm from other tissues when enough), other lesions excluded",
        "bv": "std (ddof 1) / mean of the background-shell voxels, mean over the case's lesions",
        "size_bins_mm": list(bins),
        "hotspots": f"clusters with contrast >= {threshold:g} over the local same-tissue mean "
                    f"({_pet.DEFAULT_HOTSPOT_WINDOW_MM:g} mm box) not in the reference (truth, else target) nor at a lesion",
    }


def _seg_label_order(rows: list[dict[str, float]]) -> list[int]:
    return sorted({int(k.split("_", 1)[1]) for r in rows for k in r if k.startswith("dice_")})


# ----------------------------------------------------------------------------------- report
def _json_safe(obj: Any) -> Any:
    # Strict JSON has no NaN/Infinity: write null, the summary's n_nonfinite says why.
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_json_safe(v) for v in obj]
    return obj


def _json_text(doc: dict) -> str:
    return json.dumps(_json_safe(doc), indent=2, allow_nan=False) + "\n"


@dataclass
class EvaluationReport:
    """The scores of :func:`evaluate_pairs`: per-case metrics, their summary and the conventions used."""

    #: ``"image"``, ``"segmentation"`` or ``"pet"``.
    mode: str
    pairs: list[Pair]
    #: One ``{metric: value}`` per pair, in ``pairs`` order.
    scores: list[dict[str, float]]
    #: The metric columns, in order.
    keys: list[str]
    #: :func:`~voxdiff.metrics.summary.summarize` of ``scores`` over ``keys``: mean, std, n, n_nonfinite.
    summary: dict[str, dict[str, float]]
    conventions: dict[str, Any]
    #: Segmentation: the labels scored (empty otherwise).
    labels: list[int] = field(default_factory=list)
    #: PET: per case the per-lesion rows and the strongest hot spots (empty otherwise).
    details: list[dict] = field(default_factory=list)
    unscored_targets: list[str] = field(default_factory=list)

    def _companions(self) -> list[str]:
        return [a for a in _COMPANIONS if any(getattr(p, a) is not None for p in self.pairs)]

    def _has_mask(self) -> bool:
        return any(p.mask is not None for p in self.pairs)

    @property
    def columns(self) -> list[str]:
        """The CSV columns: ``case, pred, target[, mask][, truth, regions, lesions]`` then the metrics."""
        return ["case", "pred", "target", *(["mask"] if self._has_mask() else []), *self._companions(), *self.keys]

    def rows(self) -> list[dict[str, Any]]:
        """One dict per case with the file paths (as strings) and the metric values."""
        has_mask, companions = self._has_mask(), self._companions()
        rows = []
        for pair, r in zip(self.pairs, self.scores):
            row: dict[str, Any] = {"case": pair.case, "pred": str(pair.pred), "target": str(pair.target)}
            if has_mask:
                row["mask"] = "" if pair.mask is None else str(pair.mask)
            row.update({a: "" if getattr(pair, a) is None else str(getattr(pair, a)) for a in companions})
            row.update({k: r.get(k, math.nan) for k in self.keys})
            rows.append(row)
        return rows

    def summary_document(self) -> dict[str, Any]:
        """The ``--summary`` document: mode, cases, unscored targets, conventions, mean/std per metric."""
        return {"mode": self.mode, "n_cases": len(self.pairs), "cases": [p.case for p in self.pairs],
                "unscored_targets": list(self.unscored_targets), "conventions": self.conventions,
                "metrics": self.summary}

    def details_document(self) -> dict[str, Any]:
        """The ``--details`` document (PET): the conventions and per case the lesions and hot spots."""
        return {"conventions": self.conventions, "cases": self.details}

    def to_csv(self) -> str:
        """The per-case CSV (``\\n`` line ends; floats exact as ``repr``, ``nan``/``inf`` spelled out)."""
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=self.columns, lineterminator="\n")
        writer.writeheader()
        for row in self.rows():
            writer.writerow({k: (repr(float(v)) if isinstance(v, float) else v) for k, v in row.items()})
        return buf.getvalue()

    def to_json(self) -> str:
        """:meth:`summary_document` as strict JSON (non-finite values as ``null``)."""
        return _json_text(self.summary_document())

    def details_json(self) -> str:
        """:meth:`details_document` as strict JSON (non-finite values as ``null``)."""
        return _json_text(self.details_document())


def evaluate_pairs(
    pairs: Pairing | Iterable[Pair],
    *,
    kind: str = "image",
    labels: Sequence[int] | None = None,
    data_range: float | None = None,
    pet: PetSettings | None = None,
    progress: Callable[[int, int, Pair], None] | None = None,
) -> EvaluationReport:
    """Score every pair and summarise: the library behind ``voxdiff evaluate``.

    ``kind="image"``: :func:`~voxdiff.metrics.image.image_metrics` against the target inside the
    pair's mask (``data_range``: one fixed PSNR/SSIM range, default the target's per case).
    ``kind="segmentation"``: Dice and HD95 (mm) per label of ``labels`` (default every nonzero label
    found in any case; a label absent from both maps of a case scores Dice 1, HD95 0). With ``pet``
    (implied with default settings when a pair has a truth, regions or lesions companion):
    :func:`~voxdiff.metrics.pet.pet_metrics` with each pair's companions. Prediction, target and
    companions must share shape and affine. ``progress(i, n, pair)`` is called before case ``i`` (from 1).
    """
    unscored = list(pairs.unscored_targets) if isinstance(pairs, Pairing) else []
    pairs = list(pairs)
    if not pairs:
        raise VoxdiffError("no pair to evaluate")
    if pet is None and any(getattr(p, a) is not None for p in pairs for a in _COMPANIONS):
        pet = PetSettings()
    seg = kind == "segmentation"
    label_list = None if labels is None else list(dict.fromkeys(int(v) for v in labels))
    if label_list is not None and not label_list:
        raise VoxdiffError("--labels is empty")
    check_metric_options(kind, labels_given=label_list is not None, data_range=data_range, pet=pet is not None,
                         masked=any(p.mask is not None for p in pairs))

    scores: list[dict[str, float]] = []
    details: list[dict] = []
    tables: dict[Path, Path] = {}
    for i, pair in enumerate(pairs, start=1):
        if progress is not None:
            progress(i, len(pairs), pair)
        if pet is not None:
            row, detail = _score_pet_pair(pair, data_range, pet, tables)
            scores.append(row)
            details.append(detail)
        else:
            scores.append(_score_pair(pair, seg, label_list, data_range))

    has_mask = any(p.mask is not None for p in pairs)
    has = {a: any(getattr(p, a) is not None for p in pairs) for a in _COMPANIONS}
    all_labels: list[int] = []
    if seg:
        all_labels = label_list or _seg_label_order(scores)
        # A label absent from both maps of a case scores as an empty-vs-empty structure.
        for r in scores:
            for lab in all_labels:
                r.setdefault(f"dice_{lab}", 1.0)
                r.setdefault(f"hd95_{lab}", 0.0)
        keys = [f"{m}_{lab}" for lab in all_labels for m in SEG_METRICS]
        conventions: dict[str, Any] = {"labels": all_labels, "hd95_units": "mm",
                                       "empty": "both empty: dice 1, hd95 0; one empty: dice 0, hd95 NaN (null)"}
    else:
        keys = (_pet_keys(has["truth"], has["regions"], has["lesions"], pet.size_bins) if pet is not None
                else [*IMAGE_METRICS, "data_range"])
        conventions = {"data_range": data_range if data_range is not None else "target max - min inside the mask, per case",
                       "ssim": f"3D Gaussian window {SSIM_WINDOW}, sigma {SSIM_SIGMA}, map averaged over the mask",
                       "mask": "voxels outside the mask are ignored" if has_mask else "none",
                       "nrmse": "||pred - target|| / ||target|| inside the mask"}
        if pet is not None:
            conventions.update(_pet_conventions(pet.size_bins, pet.hotspot_threshold, has_mask, has["regions"]))
    mode = "segmentation" if seg else ("pet" if pet is not None else "image")
    return EvaluationReport(mode, pairs, scores, keys, summarize(scores, keys), conventions, all_labels, details,
                            unscored)
