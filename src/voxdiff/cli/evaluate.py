"""``voxdiff evaluate``: image-similarity, segmentation or PET metrics of predictions against targets."""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import typer

from rich.markup import escape

from voxdiff.cli.app import OVERWRITE_HELP, app, console, err_console, say
from voxdiff.cli.tables import FitTable
from voxdiff.errors import VoxdiffError
from voxdiff.io import SUPPORTED_SUFFIXES, Volume, atomic_write_text, check_same_geometry, check_writable_dir, load_volume
from voxdiff.io.atomic import full_suffix

#: Per-case tables longer than this print only the summary row.
_MAX_TABLE_ROWS = 50
#: Hot spots listed per case in --details (the strongest first; the count is complete).
_MAX_DETAIL_SPOTS = 50


@dataclass
class _Pair:
    case: str
    pred: Path
    target: Path
    mask: Path | None = None
    # Case ids to look companions (truth, regions, lesions) up by, most specific first.
    keys: tuple[str, ...] = ()
    truth: Path | None = None
    regions: Path | None = None
    lesions: Path | None = None


@dataclass
class _PetInputs:
    """Where the PET companions of each case come from: a file, a folder (+ suffix) or a manifest role."""

    truth: Path | None = None
    truth_suffix: str = "_truth"
    truth_role: str | None = None
    regions: Path | None = None
    regions_suffix: str = ""
    regions_role: str | None = None
    lesions: Path | None = None
    lesions_suffix: str = "_lesions"
    lesions_role: str | None = None

    def any(self) -> bool:
        return any(v is not None for v in (self.truth, self.truth_role, self.regions, self.regions_role,
                                           self.lesions, self.lesions_role))


def _stem(path: Path) -> str:
    suffix = full_suffix(path)
    return path.name[: -len(suffix)] if suffix else path.name


def _volumes_in(folder: Path, option: str) -> dict[str, Path]:
    if not folder.is_dir():
        raise VoxdiffError(f"{folder}: {option} is not an existing folder")
    found: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        # Dot files include the temporary files of interrupted atomic writes.
        if p.name.startswith(".") or not p.is_file() or full_suffix(p).lower() not in SUPPORTED_SUFFIXES:
            continue
        case = _stem(p)
        if case in found:
            raise VoxdiffError(f"{folder}: case '{case}' appears twice ({found[case].name} and {p.name})")
        found[case] = p
    return found


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
                     target_suffix: str = "") -> tuple[list[_Pair], list[str]]:
    preds = _volumes_in(pred_dir, "--pred-dir")
    if not preds:
        raise VoxdiffError(f"{pred_dir}: no volume files ({', '.join(SUPPORTED_SUFFIXES)})")
    targets = _by_case(_volumes_in(target_dir, "--target-dir"), target_suffix)
    masks = _volumes_in(mask_dir, "--mask-dir") if mask_dir is not None else {}
    pairs: list[_Pair] = []
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
        pairs.append(_Pair(case, p, targets[case], masks.get(case), keys=(case,)))
    unmatched = sorted(set(targets) - set(owner))
    return pairs, unmatched


def _pairs_from_manifest(manifest: Path, pred_role: str, target_role: str, mask_role: str | None,
                         split: str | None, pet: _PetInputs) -> list[_Pair]:
    from voxdiff.data.manifest import load_manifest

    extra = [r for r in (mask_role, pet.truth_role, pet.regions_role, pet.lesions_role) if r]
    roles = list(dict.fromkeys([pred_role, target_role, *extra]))
    cases = load_manifest(manifest, roles=roles)
    if split is not None:
        cases = [c for c in cases if c.meta.get("split") == split]
        if not cases:
            raise VoxdiffError(f"{manifest}: no case has split '{split}'")
    def role(c, name):
        return c.path(name) if name else None

    return [_Pair(c.id, c.path(pred_role), c.path(target_role), role(c, mask_role), keys=(c.id,),
                  truth=role(c, pet.truth_role), regions=role(c, pet.regions_role), lesions=role(c, pet.lesions_role))
            for c in cases]


def _attach_companions(pairs: list[_Pair], pet: _PetInputs) -> None:
    """Fill each pair's truth / regions / lesions from a file, or from a folder by case id + suffix."""
    listings: dict[Path, dict[str, Path]] = {}
    for attr, spec, suffix, option in (("truth", pet.truth, pet.truth_suffix, "--truth"),
                                       ("regions", pet.regions, pet.regions_suffix, "--regions"),
                                       ("lesions", pet.lesions, pet.lesions_suffix, "--lesions")):
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


def _parse_labels(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        labels = [int(v) for v in text.replace(" ", "").split(",") if v != ""]
    except ValueError:
        raise VoxdiffError(f"--labels must be comma-separated integers such as 1,2,4, got '{text}'") from None
    if not labels:
        raise VoxdiffError("--labels is empty")
    return list(dict.fromkeys(labels))


def _fmt(value: float) -> str:
    return f"{value:.4g}" if math.isfinite(value) else str(value)


def _json_safe(obj):
    # Strict JSON has no NaN/Infinity: write null, the summary's n_nonfinite says why.
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_json_safe(v) for v in obj]
    return obj


def _csv_text(rows: list[dict], columns: list[str]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (repr(float(v)) if isinstance(v, float) else v) for k, v in row.items()})
    return buf.getvalue()


def _load_mask(pair: _Pair, target: Volume) -> np.ndarray | None:
    if pair.mask is None:
        return None
    mask_vol = load_volume(pair.mask, role="mask")
    check_same_geometry(target, mask_vol, what=f"case {pair.case}")
    mask = mask_vol.array != 0
    if not mask.any():
        raise VoxdiffError(f"{pair.mask} (mask): the mask is empty (no nonzero voxel)")
    return mask


def _evaluate_pair(pair: _Pair, seg: bool, labels: list[int] | None, data_range: float | None) -> dict[str, float]:
    from voxdiff import metrics

    target = load_volume(pair.target, role="target")
    pred = load_volume(pair.pred, role="prediction")
    check_same_geometry(target, pred, what=f"case {pair.case}")
    mask = _load_mask(pair, target)
    try:
        if seg:
            per_label = metrics.segmentation_metrics(pred.array, target.array, labels=labels, spacing=target.spacing)
            return {f"{m}_{lab}": v[m] for lab, v in per_label.items() for m in metrics.SEG_METRICS}
        return metrics.image_metrics(pred.array, target.array, mask=mask, data_range=data_range)
    except VoxdiffError as exc:
        raise VoxdiffError(f"case {pair.case} ({pair.pred} vs {pair.target}): {exc}") from None


@dataclass
class _PetSettings:
    data_range: float | None
    size_bins: tuple[float, ...]
    hotspot_threshold: float
    muse_tables: Path | None
    lesions_given: bool


def _lesion_json(path: Path) -> Path:
    """The lesion table beside a lesion map: ``<case>_lesions.nii.gz`` -> ``<case>_lesions.json``."""
    return path.with_name(_stem(path) + ".json")



def _simulated_activity(lesion_map_path: Path, like) -> "np.ndarray | None":
    """The simulation's noise-free activity map beside a lesion map (``<case>_lesions`` -> ``<case>_activity``).

    ``voxdiff simulate-pet`` writes it; with it each lesion's CRC divides by the true lesion /
    background ratio measured in the same ROI and shell (NEMA's actual activity ratio).
    """
    from voxdiff.io import SUPPORTED_SUFFIXES
    from voxdiff.io.atomic import case_name

    stem = case_name(lesion_map_path)
    if not stem.endswith("_lesions"):
        return None
    for suffix in SUPPORTED_SUFFIXES:
        cand = lesion_map_path.parent / f"{stem[: -len('_lesions')]}_activity{suffix}"
        if cand.is_file():
            vol = load_volume(cand, role="activity")
            check_same_geometry(like, vol, what=f"{cand}")
            return vol.array
    return None


def _evaluate_pet(pair: _Pair, opts: _PetSettings, tables: dict[Path, Path]) -> tuple[dict[str, float], dict]:
    """PET metric columns and per-lesion / hot-spot detail of one case."""
    from voxdiff import metrics
    from voxdiff.metrics.pet import pet_region_map, read_lesion_json

    target = load_volume(pair.target, role="target")
    pred = load_volume(pair.pred, role="prediction")
    check_same_geometry(target, pred, what=f"case {pair.case}")
    mask = _load_mask(pair, target)
    truth = regions = lesion_map = lesions = activity = None
    if pair.truth is not None:
        truth_vol = load_volume(pair.truth, role="truth")
        check_same_geometry(target, truth_vol, what=f"case {pair.case}")
        truth = truth_vol.array
    if pair.regions is not None:
        from voxdiff.sim.pet import find_muse_tables

        label_vol = load_volume(pair.regions, role="region labels")
        check_same_geometry(target, label_vol, what=f"case {pair.case}")
        folder = opts.muse_tables or tables.setdefault(pair.regions.parent, find_muse_tables(pair.regions))
        try:
            regions = pet_region_map(label_vol.array, folder)
        except VoxdiffError as exc:
            raise VoxdiffError(f"{pair.regions} (--regions): {exc}") from None
        if mask is None:
            mask = label_vol.array > 0  # the labelled intracranial volume, as the PET benchmarks
    if pair.lesions is not None:
        lesion_vol = load_volume(pair.lesions, role="lesion map")
        check_same_geometry(target, lesion_vol, what=f"case {pair.case}")
        lesion_map = lesion_vol.array
        table = _lesion_json(pair.lesions)
        lesions = read_lesion_json(table)["lesions"]
        activity = _simulated_activity(pair.lesions, target)
    try:
        out = metrics.pet_metrics(pred.array, target.spacing, target=target.array, truth=truth, regions=regions,
                                  lesion_map=lesion_map, lesions=lesions, mask=mask, data_range=opts.data_range,
                                  size_bins=opts.size_bins, hotspot_threshold=opts.hotspot_threshold,
                                  activity=activity)
    except VoxdiffError as exc:
        where = ", ".join(str(p) for p in (pair.pred, pair.truth or pair.target, pair.lesions) if p is not None)
        raise VoxdiffError(f"case {pair.case} ({where}): {exc}") from None
    detail = {"case": pair.case, "pred": str(pair.pred), "n_hotspots": len(out["hotspots"]),
              "lesion_table": str(_lesion_json(pair.lesions)) if pair.lesions is not None else None,
              "lesions": out["lesions"], "hotspots": out["hotspots"][:_MAX_DETAIL_SPOTS]}
    return out["metrics"], detail


def _pet_keys(pet: _PetInputs, has_regions: bool, has_lesions: bool, bins: tuple[float, ...]) -> list[str]:
    from voxdiff import metrics
    from voxdiff.metrics.pet import PET_REGIONS, crc_summary

    keys = [*metrics.IMAGE_METRICS, "data_range"]
    if pet.truth is not None or pet.truth_role is not None:
        keys += [f"{k}_truth" for k in (*metrics.IMAGE_METRICS, "data_range")]
    if has_regions:
        keys += [f"bias_{r}" for r in PET_REGIONS]
    if has_lesions:
        keys += list(crc_summary([], bins))
    return keys + ["hotspots", "hotspot_peak"]


def _seg_label_order(rows: list[dict[str, float]]) -> list[int]:
    labels = {int(k.split("_", 1)[1]) for r in rows for k in r if k.startswith("dice_")}
    return sorted(labels)


def _parse_bins(text: str) -> tuple[float, ...]:
    try:
        bins = tuple(float(v) for v in text.replace(" ", "").split(",") if v != "")
    except ValueError:
        raise VoxdiffError(f"--size-bins must be comma-separated diameters in mm such as 4,8,16, got '{text}'") from None
    if not bins or not all(math.isfinite(b) and b > 0 for b in bins):
        raise VoxdiffError(f"--size-bins must be positive diameters in mm such as 4,8,16, got '{text}'")
    return tuple(dict.fromkeys(bins))


@app.command()
def evaluate(
    pred: Path | None = typer.Option(None, "--pred", help="Predicted volume (one-pair mode)."),
    target: Path | None = typer.Option(None, "--target", help="Reference volume (one-pair mode); for PET the full dose."),
    mask: Path | None = typer.Option(None, "--mask", help="Evaluation mask, nonzero = inside (image metrics)."),
    pred_dir: Path | None = typer.Option(None, "--pred-dir", help="Folder of predictions, matched by file name: "
                                         "<case>.* or <case>_<anything>.* (the longest '_'-prefix that is a target case)."),
    target_dir: Path | None = typer.Option(None, "--target-dir", help="Folder of references named <case><target-suffix>.*"),
    target_suffix: str = typer.Option("", "--target-suffix", help="With --target-dir: file-name ending after the case id, e.g. _full."),
    mask_dir: Path | None = typer.Option(None, "--mask-dir", help="Folder of masks with the same file names."),
    manifest: Path | None = typer.Option(None, "--manifest", help="CSV/JSON manifest: a 'case' column and one column per role."),
    pred_role: str = typer.Option("pred", "--pred-role", help="Manifest column of the predictions."),
    target_role: str = typer.Option("target", "--target-role", help="Manifest column of the references."),
    mask_role: str | None = typer.Option(None, "--mask-role", help="Manifest column of the masks."),
    split: str | None = typer.Option(None, "--split", help="Only the manifest cases whose 'split' column has this value."),
    seg: bool = typer.Option(False, "--seg", help="Label maps: Dice and HD95 (mm) per label instead of image metrics."),
    labels: str | None = typer.Option(None, "--labels", help="With --seg: labels to score, e.g. 1,2,4 (default: every nonzero label found)."),
    data_range: float | None = typer.Option(None, "--data-range", help="PSNR/SSIM data range (default: target max - min inside the mask, per case)."),
    pet: bool = typer.Option(False, "--pet", help="PET metric set (on by itself with --truth/--regions/--lesions)."),
    truth: Path | None = typer.Option(None, "--truth", help="PET: noise-free image, a file or a folder of <case><truth-suffix>.*"),
    truth_suffix: str = typer.Option("_truth", "--truth-suffix", help="File-name ending of the truth in a --truth folder."),
    truth_role: str | None = typer.Option(None, "--truth-role", help="Manifest column of the truth."),
    regions: Path | None = typer.Option(None, "--regions", help="PET: MUSE label map for regional bias, a file or a folder of <case><regions-suffix>.*"),
    regions_suffix: str = typer.Option("", "--regions-suffix", help="File-name ending of the label maps in a --regions folder."),
    regions_role: str | None = typer.Option(None, "--regions-role", help="Manifest column of the MUSE label maps."),
    muse_tables: Path | None = typer.Option(None, "--muse-tables", help="Folder of the MUSE CSV tables (default: beside the labels, else shared data)."),
    lesions: Path | None = typer.Option(None, "--lesions", help="PET: lesion-id map (its <name>.json table beside it), a file or a folder of <case><lesions-suffix>.*"),
    lesions_suffix: str = typer.Option("_lesions", "--lesions-suffix", help="File-name ending of the lesion maps in a --lesions folder."),
    lesions_role: str | None = typer.Option(None, "--lesions-role", help="Manifest column of the lesion maps."),
    size_bins: str = typer.Option("4,8,16", "--size-bins", help="PET: lesion diameters (mm) of the crc_<d>mm columns; each lesion goes to the nearest (log scale)."),
    hotspot_threshold: float = typer.Option(1.5, "--hotspot-threshold", help="PET: hot spot = contrast over the local same-tissue background at least this."),
    out: Path | None = typer.Option(None, "--out", help="CSV with one row per case."),
    summary: Path | None = typer.Option(None, "--summary", help="JSON with mean/std per metric."),
    details: Path | None = typer.Option(None, "--details", help="PET: JSON with per-lesion CRC/BV and the hot spots of each case."),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
) -> None:
    """Score predicted volumes against references: PSNR, SSIM, MAE, NMSE, NRMSE; with --seg Dice and HD95; with --pet PET metrics.

    Image metrics are per volume, in the target's intensity units. The data range for PSNR
    and SSIM is the target's max - min inside the mask (whole volume without one) unless
    --data-range is given. Voxels outside the mask are ignored by PSNR, MAE, NMSE and NRMSE;
    SSIM is 3D with an 11-voxel Gaussian window (sigma 1.5), its map averaged over the mask.
    NMSE is ||pred - target||^2 / ||target||^2 and NRMSE its square root. With --seg, Dice and
    HD95 (95th-percentile symmetric surface distance, mm from the voxel spacing) per label;
    both structures empty: Dice 1, HD95 0; one empty: Dice 0, HD95 NaN. The summary is mean
    and std (ddof=0) over cases of the finite values (see docs/metrics.md). Prediction and
    target must share shape and affine.

    PET (--pet, or any of --truth/--regions/--lesions): the image metrics against the target
    (full dose) and, with --truth, against the truth (*_truth columns); with --regions (MUSE
    labels) the mean bias in % per region (bias_gm, bias_wm, bias_deep_gm, bias_cerebellum;
    reference = truth, else target; the mask defaults to labels > 0); with --lesions (lesion-id
    map + <name>.json table) the mean contrast recovery per lesion size (crc_<d>mm, and
    crc_truth_<d>mm of the truth itself) and background variability (bv); always the count of
    hot spots not in the reference (hotspots) and the worst one's contrast (hotspot_peak).
    Companions given as a folder are found by case id: a folder of predictions named <case>.*
    or <case>_<anything>.* against a simulation folder <case>_full, <case>_truth, <case>_lesions.

    Example: [cyan]voxdiff evaluate --pred-dir out/ --target-dir data/t2/ --out scores.csv --summary scores.json[/]

    Example (PET): [cyan]voxdiff evaluate --pred-dir denoised/ --target-dir sim/ --target-suffix _full --truth sim/ --lesions sim/ --regions labels/ --out pet.csv --details lesions.json[/]
    """
    from voxdiff import metrics

    modes = [m for m, on in (("--pred/--target", pred is not None or target is not None),
                             ("--pred-dir/--target-dir", pred_dir is not None or target_dir is not None),
                             ("--manifest", manifest is not None)) if on]
    if len(modes) != 1:
        raise VoxdiffError("give exactly one of --pred/--target, --pred-dir/--target-dir or --manifest"
                           + (f" (got {' and '.join(modes)})" if modes else ""))
    pet_in = _PetInputs(truth, truth_suffix, truth_role, regions, regions_suffix, regions_role,
                        lesions, lesions_suffix, lesions_role)
    pet = pet or pet_in.any()
    if seg and (mask is not None or mask_dir is not None or mask_role is not None or data_range is not None):
        raise VoxdiffError("--mask/--mask-dir/--mask-role and --data-range apply to image metrics, not to --seg")
    if seg and pet:
        raise VoxdiffError("--pet/--truth/--regions/--lesions compute PET image metrics and cannot be combined with --seg")
    if labels is not None and not seg:
        raise VoxdiffError("--labels applies to --seg only (PET region labels go to --regions)")
    if data_range is not None and not (math.isfinite(data_range) and data_range > 0):
        raise VoxdiffError(f"--data-range must be a positive number, got {data_range}")
    if split is not None and manifest is None:
        raise VoxdiffError("--split applies to --manifest only")
    if manifest is None and any((truth_role, regions_role, lesions_role)):
        raise VoxdiffError("--truth-role/--regions-role/--lesions-role apply to --manifest only")
    for name, path, role in (("--truth", truth, truth_role), ("--regions", regions, regions_role),
                             ("--lesions", lesions, lesions_role)):
        if path is not None and role is not None:
            raise VoxdiffError(f"give {name} or {name}-role, not both")
    if target_suffix and target_dir is None:
        raise VoxdiffError("--target-suffix applies to --target-dir only")
    if details is not None and not pet:
        raise VoxdiffError("--details holds per-lesion PET detail: it needs --pet (or --truth/--regions/--lesions)")
    if not (math.isfinite(hotspot_threshold) and hotspot_threshold > 1):
        raise VoxdiffError(f"--hotspot-threshold is a contrast above 1, got {hotspot_threshold}")
    bins = _parse_bins(size_bins)
    label_list = _parse_labels(labels)
    # Fail on a bad output path before spending minutes on the metrics.
    outputs = [p for p in (out, summary, details) if p is not None]
    for path in outputs:
        check_writable_dir(path)
    if len({p.resolve() for p in outputs}) != len(outputs):
        raise VoxdiffError(f"{outputs[0]}: --out, --summary and --details must name different files")

    unmatched: list[str] = []
    if manifest is not None:
        pairs = _pairs_from_manifest(manifest, pred_role, target_role, mask_role, split, pet_in)
    elif pred_dir is not None or target_dir is not None:
        if pred_dir is None or target_dir is None:
            raise VoxdiffError("--pred-dir and --target-dir go together")
        if mask is not None:
            raise VoxdiffError("use --mask-dir (not --mask) with --pred-dir/--target-dir")
        pairs, unmatched = _pairs_from_dirs(pred_dir, target_dir, mask_dir, target_suffix)
    else:
        if pred is None or target is None:
            raise VoxdiffError("--pred and --target go together")
        if mask_dir is not None:
            raise VoxdiffError("use --mask (not --mask-dir) with --pred/--target")
        keys = tuple(dict.fromkeys(_case_keys(_stem(pred)) + _case_keys(_stem(target))))
        pairs = [_Pair(_stem(pred), pred, target, mask, keys=keys)]
    _attach_companions(pairs, pet_in)
    # No output may replace a volume, a table or the manifest being scored (checked before any metric).
    from voxdiff.io.guard import check_path_plan

    lesion_tables = [_lesion_json(p.lesions) for p in pairs if p.lesions is not None]
    check_path_plan({"--manifest": manifest, "--pred": [p.pred for p in pairs], "--target": [p.target for p in pairs],
                     "--mask": [p.mask for p in pairs if p.mask is not None],
                     **{f"--{a}": [getattr(p, a) for p in pairs if getattr(p, a) is not None]
                        for a in ("truth", "regions", "lesions")},
                     "--lesions (table)": lesion_tables},
                    {"--out": out, "--summary": summary, "--details": details},
                    existing=None if overwrite else "--overwrite")
    if pet and any(p.lesions is not None and p.regions is None for p in pairs):
        err_console.print("[yellow]warning:[/] lesions without --regions: the CRC background shells are not restricted "
                          "to the lesion's tissue", highlight=False, soft_wrap=True)
    if unmatched:
        err_console.print(f"[yellow]warning:[/] {len(unmatched)} target(s) in {escape(str(target_dir))} have no "
                          f"prediction and are not scored (first: {escape(str(unmatched[0]))})", highlight=False,
                          soft_wrap=True)

    results: list[dict[str, float]] = []
    case_details: list[dict] = []
    settings = _PetSettings(data_range, bins, hotspot_threshold, muse_tables, pet_in.lesions is not None or bool(lesions_role))
    tables: dict[Path, Path] = {}
    for i, pair in enumerate(pairs, start=1):
        if len(pairs) > 1:
            err_console.print(f"[dim]{i}/{len(pairs)} {escape(pair.case)}[/]", highlight=False)
        if pet:
            row, detail = _evaluate_pet(pair, settings, tables)
            results.append(row)
            case_details.append(detail)
        else:
            results.append(_evaluate_pair(pair, seg, label_list, data_range))

    if seg:
        all_labels = label_list or _seg_label_order(results)
        # A label absent from both maps of a case scores as an empty-vs-empty structure.
        for r in results:
            for lab in all_labels:
                r.setdefault(f"dice_{lab}", 1.0)
                r.setdefault(f"hd95_{lab}", 0.0)
        keys = [f"{m}_{lab}" for lab in all_labels for m in metrics.SEG_METRICS]
    elif pet:
        keys = _pet_keys(pet_in, pet_in.regions is not None or bool(regions_role), settings.lesions_given, bins)
    else:
        keys = [*metrics.IMAGE_METRICS, "data_range"]
    stats = metrics.summarize(results, keys)

    has_mask = any(p.mask is not None for p in pairs)
    id_cols = ["case", "pred", "target"] + (["mask"] if has_mask else [])
    companions = [a for a in ("truth", "regions", "lesions") if any(getattr(p, a) is not None for p in pairs)]
    id_cols += companions
    rows = []
    for pair, r in zip(pairs, results):
        row = {"case": pair.case, "pred": str(pair.pred), "target": str(pair.target)}
        if has_mask:
            row["mask"] = "" if pair.mask is None else str(pair.mask)
        row.update({a: str(getattr(pair, a)) for a in companions})
        row.update({k: r[k] for k in keys})
        rows.append(row)
    if seg:
        conventions = {"labels": all_labels, "hd95_units": "mm",
                       "empty": "both empty: dice 1, hd95 0; one empty: dice 0, hd95 NaN (null)"}
    else:
        conventions = {"data_range": data_range if data_range is not None else "target max - min inside the mask, per case",
                       "ssim": f"3D Gaussian window {metrics.SSIM_WINDOW}, sigma {metrics.SSIM_SIGMA}, map averaged over the mask",
                       "mask": "voxels outside the mask are ignored" if has_mask else "none",
                       "nrmse": "||pred - target|| / ||target|| inside the mask"}
    if pet:
        conventions.update(_pet_conventions(bins, hotspot_threshold, has_mask, "regions" in companions))
    summary_doc = {
        "mode": "segmentation" if seg else ("pet" if pet else "image"),
        "n_cases": len(pairs),
        "cases": [p.case for p in pairs],
        "unscored_targets": unmatched,
        "conventions": conventions,
        "metrics": stats,
    }
    from voxdiff.io.atomic import staged_outputs

    with staged_outputs() as stage:  # the three files together, or none changed
        if out is not None:
            atomic_write_text(stage.path(out), _csv_text(rows, id_cols + keys))
        if summary is not None:
            atomic_write_text(stage.path(summary), json.dumps(_json_safe(summary_doc), indent=2, allow_nan=False) + "\n")
        if details is not None:
            doc = {"conventions": conventions, "cases": case_details}
            atomic_write_text(stage.path(details), json.dumps(_json_safe(doc), indent=2, allow_nan=False) + "\n")

    _print_table(pairs, results, stats, keys, seg, all_labels if seg else [], pet)
    for path in outputs:
        say(f"wrote {path}")


def _pet_conventions(bins: tuple[float, ...], threshold: float, has_mask: bool, has_regions: bool) -> dict:
    from voxdiff.metrics import pet as P

    return {
        "pet_mask": ("--mask" if has_mask else "MUSE labels > 0" if has_regions else "none")
                    + " for the image metrics and the hot-spot search",
        "bias": "100 (mean pred - mean ref) / mean ref per region, lesion voxels excluded; ref = truth, else target",
        "crc": f"(mean roi / mean background - 1) / (contrast - 1); background shell r + {P.DEFAULT_GAP_MM:g} to "
               f"r + {P.DEFAULT_GAP_MM + P.DEFAULT_WIDTH_MM:g} mm from the centre, same tissue (its voxels > "
               f"{P.DEFAULT_EDGE_MM:g} mm from other tissues when enough), other lesions excluded",
        "bv": "std (ddof 1) / mean of the background-shell voxels, mean over the case's lesions",
        "size_bins_mm": list(bins),
        "hotspots": f"clusters with contrast >= {threshold:g} over the local same-tissue mean "
                    f"({P.DEFAULT_HOTSPOT_WINDOW_MM:g} mm box) not in the reference (truth, else target) nor at a lesion",
    }


def _mean_std(s: dict[str, float]) -> str:
    text = f"{_fmt(s['mean'])} ± {_fmt(s['std'])}" if s["n"] else "n/a"
    return text + (f" ({s['n_nonfinite']} non-finite)" if s["n_nonfinite"] else "")


def _print_table(pairs: list[_Pair], results: list[dict[str, float]], stats: dict, keys: list[str],
                 seg: bool, labels: list[int], pet: bool = False) -> None:
    if seg:
        # One row per label: per-label columns would not fit for whole-brain parcellations.
        table = FitTable(title=f"segmentation, {len(pairs)} case(s): mean ± std")
        table.add_column("label")
        table.add_column("Dice", numeric=True)
        table.add_column("HD95 (mm)", numeric=True)
        for lab in labels:
            table.add_row(str(lab), _mean_std(stats[f"dice_{lab}"]), _mean_std(stats[f"hd95_{lab}"]))
        console.print(table)
        return
    from voxdiff.metrics import IMAGE_METRICS

    image_keys = [*IMAGE_METRICS, "data_range"]
    table = FitTable(title=f"image metrics, {len(pairs)} case(s)")
    table.add_column("case")
    for k in image_keys:
        table.add_column(k.upper() if k != "data_range" else "range", numeric=True)
    if len(pairs) <= _MAX_TABLE_ROWS:
        for pair, r in zip(pairs, results):
            table.add_row(escape(pair.case), *(_fmt(r[k]) for k in image_keys))
    if len(pairs) > 1:
        table.add_row("mean ± std", *(_mean_std(stats[k]) for k in image_keys), style="bold")
    console.print(table)
    if pet:
        # One row per metric: the PET set is too wide for one row per case.
        table = FitTable(title=f"PET metrics, {len(pairs)} case(s): mean ± std")
        table.add_column("metric")
        table.add_column("value", numeric=True)
        for k in keys:
            if k not in image_keys:
                table.add_row(k, _mean_std(stats[k]))
        console.print(table)
