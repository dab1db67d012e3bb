"""``voxdiff evaluate``: image-similarity or segmentation metrics of predictions against targets."""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path

import typer
from rich.table import Table

from voxdiff.cli.app import app, console, err_console
from voxdiff.errors import VoxdiffError
from voxdiff.io import SUPPORTED_SUFFIXES, atomic_write_text, check_same_geometry, check_writable_dir, load_volume
from voxdiff.io.atomic import full_suffix

#: Per-case tables longer than this print only the summary row.
_MAX_TABLE_ROWS = 50


@dataclass
class _Pair:
    case: str
    pred: Path
    target: Path
    mask: Path | None = None


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


def _pairs_from_dirs(pred_dir: Path, target_dir: Path, mask_dir: Path | None) -> tuple[list[_Pair], list[str]]:
    preds = _volumes_in(pred_dir, "--pred-dir")
    if not preds:
        raise VoxdiffError(f"{pred_dir}: no volume files ({', '.join(SUPPORTED_SUFFIXES)})")
    targets = _volumes_in(target_dir, "--target-dir")
    masks = _volumes_in(mask_dir, "--mask-dir") if mask_dir is not None else {}
    pairs = []
    for case, p in preds.items():
        if case not in targets:
            raise VoxdiffError(f"{p}: no target named '{case}.*' in {target_dir}")
        if mask_dir is not None and case not in masks:
            raise VoxdiffError(f"{p}: no mask named '{case}.*' in {mask_dir}")
        pairs.append(_Pair(case, p, targets[case], masks.get(case)))
    unmatched = sorted(set(targets) - set(preds))
    return pairs, unmatched


def _pairs_from_manifest(manifest: Path, pred_role: str, target_role: str, mask_role: str | None,
                         split: str | None) -> list[_Pair]:
    from voxdiff.data.manifest import load_manifest

    roles = [pred_role, target_role] + ([mask_role] if mask_role else [])
    cases = load_manifest(manifest, roles=roles)
    if split is not None:
        cases = [c for c in cases if c.meta.get("split") == split]
        if not cases:
            raise VoxdiffError(f"{manifest}: no case has split '{split}'")
    return [_Pair(c.id, c.path(pred_role), c.path(target_role), c.path(mask_role) if mask_role else None) for c in cases]


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


def _evaluate_pair(pair: _Pair, seg: bool, labels: list[int] | None, data_range: float | None) -> dict[str, float]:
    from voxdiff import metrics

    target = load_volume(pair.target, role="target")
    pred = load_volume(pair.pred, role="prediction")
    check_same_geometry(target, pred, what=f"case {pair.case}")
    mask = None
    if pair.mask is not None:
        mask_vol = load_volume(pair.mask, role="mask")
        check_same_geometry(target, mask_vol, what=f"case {pair.case}")
        mask = mask_vol.array != 0
        if not mask.any():
            raise VoxdiffError(f"{pair.mask} (mask): the mask is empty (no nonzero voxel)")
    try:
        if seg:
            per_label = metrics.segmentation_metrics(pred.array, target.array, labels=labels, spacing=target.spacing)
            return {f"{m}_{lab}": v[m] for lab, v in per_label.items() for m in metrics.SEG_METRICS}
        return metrics.image_metrics(pred.array, target.array, mask=mask, data_range=data_range)
    except VoxdiffError as exc:
        raise VoxdiffError(f"case {pair.case} ({pair.pred} vs {pair.target}): {exc}") from None


def _seg_label_order(rows: list[dict[str, float]]) -> list[int]:
    labels = {int(k.split("_", 1)[1]) for r in rows for k in r if k.startswith("dice_")}
    return sorted(labels)


@app.command()
def evaluate(
    pred: Path | None = typer.Option(None, "--pred", help="Predicted volume (one-pair mode)."),
    target: Path | None = typer.Option(None, "--target", help="Reference volume (one-pair mode)."),
    mask: Path | None = typer.Option(None, "--mask", help="Evaluation mask, nonzero = inside (image metrics)."),
    pred_dir: Path | None = typer.Option(None, "--pred-dir", help="Folder of predictions, matched by file name."),
    target_dir: Path | None = typer.Option(None, "--target-dir", help="Folder of references with the same file names."),
    mask_dir: Path | None = typer.Option(None, "--mask-dir", help="Folder of masks with the same file names."),
    manifest: Path | None = typer.Option(None, "--manifest", help="CSV/JSON manifest: a 'case' column and one column per role."),
    pred_role: str = typer.Option("pred", "--pred-role", help="Manifest column of the predictions."),
    target_role: str = typer.Option("target", "--target-role", help="Manifest column of the references."),
    mask_role: str | None = typer.Option(None, "--mask-role", help="Manifest column of the masks."),
    split: str | None = typer.Option(None, "--split", help="Only the manifest cases whose 'split' column has this value."),
    seg: bool = typer.Option(False, "--seg", help="Label maps: Dice and HD95 (mm) per label instead of image metrics."),
    labels: str | None = typer.Option(None, "--labels", help="With --seg: labels to score, e.g. 1,2,4 (default: every nonzero label found)."),
    data_range: float | None = typer.Option(None, "--data-range", help="PSNR/SSIM data range (default: target max - min inside the mask, per case)."),
    out: Path | None = typer.Option(None, "--out", help="CSV with one row per case."),
    summary: Path | None = typer.Option(None, "--summary", help="JSON with mean/std per metric."),
) -> None:
    """Score predicted volumes against references: PSNR, SSIM, MAE, NMSE, or with --seg Dice and HD95.

    Image metrics are per volume, in the target's intensity units. The data range for PSNR
    and SSIM is the target's max - min inside the mask (whole volume without one) unless
    --data-range is given. Voxels outside the mask are ignored by PSNR, MAE and NMSE; SSIM is
    3D with an 11-voxel Gaussian window (sigma 1.5), its map averaged over the mask. NMSE is
    ||pred - target||^2 / ||target||^2. With --seg, Dice and HD95 (95th-percentile symmetric
    surface distance, mm from the voxel spacing) per label; both structures empty: Dice 1,
    HD95 0; one empty: Dice 0, HD95 NaN. The summary is mean and std (ddof=0) over cases of
    the finite values (see docs/metrics.md). Prediction and target must share shape and affine.

    Example: [cyan]voxdiff evaluate --pred-dir out/ --target-dir data/t2/ --out scores.csv --summary scores.json[/]
    """
    from voxdiff import metrics

    modes = [m for m, on in (("--pred/--target", pred is not None or target is not None),
                             ("--pred-dir/--target-dir", pred_dir is not None or target_dir is not None),
                             ("--manifest", manifest is not None)) if on]
    if len(modes) != 1:
        raise VoxdiffError("give exactly one of --pred/--target, --pred-dir/--target-dir or --manifest"
                           + (f" (got {' and '.join(modes)})" if modes else ""))
    if seg and (mask is not None or mask_dir is not None or mask_role is not None or data_range is not None):
        raise VoxdiffError("--mask/--mask-dir/--mask-role and --data-range apply to image metrics, not to --seg")
    if labels is not None and not seg:
        raise VoxdiffError("--labels applies to --seg only")
    if data_range is not None and not (math.isfinite(data_range) and data_range > 0):
        raise VoxdiffError(f"--data-range must be a positive number, got {data_range}")
    if split is not None and manifest is None:
        raise VoxdiffError("--split applies to --manifest only")
    label_list = _parse_labels(labels)
    # Fail on a bad output path before spending minutes on the metrics.
    for path in (out, summary):
        if path is not None:
            check_writable_dir(path)
    if out is not None and summary is not None and out.resolve() == summary.resolve():
        raise VoxdiffError(f"{out}: --out and --summary name the same file")

    unmatched: list[str] = []
    if manifest is not None:
        pairs = _pairs_from_manifest(manifest, pred_role, target_role, mask_role, split)
    elif pred_dir is not None or target_dir is not None:
        if pred_dir is None or target_dir is None:
            raise VoxdiffError("--pred-dir and --target-dir go together")
        if mask is not None:
            raise VoxdiffError("use --mask-dir (not --mask) with --pred-dir/--target-dir")
        pairs, unmatched = _pairs_from_dirs(pred_dir, target_dir, mask_dir)
    else:
        if pred is None or target is None:
            raise VoxdiffError("--pred and --target go together")
        if mask_dir is not None:
            raise VoxdiffError("use --mask (not --mask-dir) with --pred/--target")
        pairs = [_Pair(_stem(pred), pred, target, mask)]
    if unmatched:
        err_console.print(f"[yellow]warning:[/] {len(unmatched)} target(s) in {target_dir} have no prediction and "
                          f"are not scored (first: {unmatched[0]})", highlight=False, soft_wrap=True)

    results: list[dict[str, float]] = []
    for i, pair in enumerate(pairs, start=1):
        if len(pairs) > 1:
            err_console.print(f"[dim]{i}/{len(pairs)} {pair.case}[/]", highlight=False)
        results.append(_evaluate_pair(pair, seg, label_list, data_range))

    if seg:
        all_labels = label_list or _seg_label_order(results)
        # A label absent from both maps of a case scores as an empty-vs-empty structure.
        for r in results:
            for lab in all_labels:
                r.setdefault(f"dice_{lab}", 1.0)
                r.setdefault(f"hd95_{lab}", 0.0)
        keys = [f"{m}_{lab}" for lab in all_labels for m in metrics.SEG_METRICS]
    else:
        keys = [*metrics.IMAGE_METRICS, "data_range"]
    stats = metrics.summarize(results, keys)

    has_mask = any(p.mask is not None for p in pairs)
    id_cols = ["case", "pred", "target"] + (["mask"] if has_mask else [])
    rows = []
    for pair, r in zip(pairs, results):
        row = {"case": pair.case, "pred": str(pair.pred), "target": str(pair.target)}
        if has_mask:
            row["mask"] = "" if pair.mask is None else str(pair.mask)
        row.update({k: r[k] for k in keys})
        rows.append(row)
    summary_doc = {
        "mode": "segmentation" if seg else "image",
        "n_cases": len(pairs),
        "cases": [p.case for p in pairs],
        "unscored_targets": unmatched,
        "conventions": {
            "summary": "mean and std (ddof=0) over cases of the finite values; n counts them",
            **({"labels": all_labels, "hd95_units": "mm", "empty": "both empty: dice 1, hd95 0; one empty: dice 0, hd95 NaN (null)"}
               if seg else
               {"data_range": data_range if data_range is not None else "target max - min inside the mask, per case",
                "ssim": f"3D Gaussian window {metrics.SSIM_WINDOW}, sigma {metrics.SSIM_SIGMA}, map averaged over the mask",
                "mask": "voxels outside the mask are ignored" if has_mask else "none"}),
        },
        "metrics": stats,
    }
    if out is not None:
        atomic_write_text(out, _csv_text(rows, id_cols + keys))
    if summary is not None:
        atomic_write_text(summary, json.dumps(_json_safe(summary_doc), indent=2, allow_nan=False) + "\n")

    _print_table(pairs, results, stats, keys, seg, all_labels if seg else [])
    for path in (out, summary):
        if path is not None:
            console.print(f"wrote {path}", highlight=False)


def _mean_std(s: dict[str, float]) -> str:
    text = f"{_fmt(s['mean'])} ± {_fmt(s['std'])}" if s["n"] else "n/a"
    return text + (f" ({s['n_nonfinite']} non-finite)" if s["n_nonfinite"] else "")


def _print_table(pairs: list[_Pair], results: list[dict[str, float]], stats: dict, keys: list[str],
                 seg: bool, labels: list[int]) -> None:
    if seg:
        # One row per label: per-label columns would not fit for whole-brain parcellations.
        table = Table(title=f"segmentation, {len(pairs)} case(s): mean ± std")
        for col in ("label", "Dice", "HD95 (mm)"):
            table.add_column(col)
        for lab in labels:
            table.add_row(str(lab), _mean_std(stats[f"dice_{lab}"]), _mean_std(stats[f"hd95_{lab}"]))
        console.print(table)
        return
    table = Table(title=f"image metrics, {len(pairs)} case(s)")
    table.add_column("case")
    for k in keys:
        table.add_column(k.upper() if k != "data_range" else "range")
    if len(pairs) <= _MAX_TABLE_ROWS:
        for pair, r in zip(pairs, results):
            table.add_row(pair.case, *(_fmt(r[k]) for k in keys))
    if len(pairs) > 1:
        table.add_row("mean ± std", *(_mean_std(stats[k]) for k in keys), style="bold")
    console.print(table)
