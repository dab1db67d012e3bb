"""``voxdiff evaluate``: image-similarity, segmentation or PET metrics of predictions against targets.

Option parsing, output-path checks, printing; the pairing and scoring are :mod:`voxdiff.metrics.evaluation`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.markup import escape

from voxdiff.cli.app import OVERWRITE_HELP, app, console, err_console, say
from voxdiff.cli.tables import FitTable
from voxdiff.errors import VoxdiffError
from voxdiff.io import atomic_write_text, check_writable_dir

if TYPE_CHECKING:  # the metrics are imported when the command runs, not when the CLI starts
    from voxdiff.metrics.evaluation import EvaluationReport, Pair

#: Per-case tables longer than this print only the summary row.
_MAX_TABLE_ROWS = 50


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
    from voxdiff.io.atomic import staged_outputs
    from voxdiff.io.guard import check_path_plan
    from voxdiff.metrics.evaluation import (
        PetSettings,
        check_metric_options,
        evaluate_pairs,
        find_pairs,
        lesion_table_path,
    )

    pet = pet or any(v is not None for v in (truth, truth_role, regions, regions_role, lesions, lesions_role))
    kind = "segmentation" if seg else "image"
    check_metric_options(kind, labels_given=labels is not None, data_range=data_range, pet=pet,
                         masked=any(v is not None for v in (mask, mask_dir, mask_role)))
    if details is not None and not pet:
        raise VoxdiffError("--details holds per-lesion PET detail: it needs --pet (or --truth/--regions/--lesions)")
    pet_settings = PetSettings(_parse_bins(size_bins), hotspot_threshold, muse_tables)
    label_list = _parse_labels(labels)
    pairing = find_pairs(pred=pred, target=target, mask=mask, pred_dir=pred_dir, target_dir=target_dir,
                         target_suffix=target_suffix, mask_dir=mask_dir, manifest=manifest, pred_role=pred_role,
                         target_role=target_role, mask_role=mask_role, split=split,
                         truth=truth, truth_suffix=truth_suffix, truth_role=truth_role,
                         regions=regions, regions_suffix=regions_suffix, regions_role=regions_role,
                         lesions=lesions, lesions_suffix=lesions_suffix, lesions_role=lesions_role)
    pairs = pairing.pairs
    # Fail on a bad output path before spending minutes on the metrics.
    outputs = [p for p in (out, summary, details) if p is not None]
    for path in outputs:
        check_writable_dir(path)
    if len({p.resolve() for p in outputs}) != len(outputs):
        raise VoxdiffError(f"{outputs[0]}: --out, --summary and --details must name different files")
    # No output may replace a volume, a table or the manifest being scored (checked before any metric).
    check_path_plan({"--manifest": manifest, "--pred": [p.pred for p in pairs], "--target": [p.target for p in pairs],
                     "--mask": [p.mask for p in pairs if p.mask is not None],
                     **{f"--{a}": [getattr(p, a) for p in pairs if getattr(p, a) is not None]
                        for a in ("truth", "regions", "lesions")},
                     "--lesions (table)": [lesion_table_path(p.lesions) for p in pairs if p.lesions is not None]},
                    {"--out": out, "--summary": summary, "--details": details},
                    existing=None if overwrite else "--overwrite")
    if pet and any(p.lesions is not None and p.regions is None for p in pairs):
        err_console.print("[yellow]warning:[/] lesions without --regions: the CRC background shells are not restricted "
                          "to the lesion's tissue", highlight=False, soft_wrap=True)
    unmatched = pairing.unscored_targets
    if unmatched:
        err_console.print(f"[yellow]warning:[/] {len(unmatched)} target(s) in {escape(str(target_dir))} have no "
                          f"prediction and are not scored (first: {escape(str(unmatched[0]))})", highlight=False,
                          soft_wrap=True)

    def progress(i: int, n: int, pair: Pair) -> None:
        if n > 1:
            err_console.print(f"[dim]{i}/{n} {escape(pair.case)}[/]", highlight=False)

    report = evaluate_pairs(pairing, kind=kind, labels=label_list, data_range=data_range,
                            pet=pet_settings if pet else None, progress=progress)
    with staged_outputs() as stage:  # the three files together, or none changed
        if out is not None:
            atomic_write_text(stage.path(out), report.to_csv())
        if summary is not None:
            atomic_write_text(stage.path(summary), report.to_json())
        if details is not None:
            atomic_write_text(stage.path(details), report.details_json())

    _print_table(report)
    for path in outputs:
        say(f"wrote {path}")


def _fmt(value: float) -> str:
    return f"{value:.4g}" if math.isfinite(value) else str(value)


def _mean_std(s: dict[str, float]) -> str:
    text = f"{_fmt(s['mean'])} ± {_fmt(s['std'])}" if s["n"] else "n/a"
    return text + (f" ({s['n_nonfinite']} non-finite)" if s["n_nonfinite"] else "")


def _print_table(report: EvaluationReport) -> None:
    stats, n = report.summary, len(report.pairs)
    if report.mode == "segmentation":
        # One row per label: per-label columns would not fit for whole-brain parcellations.
        table = FitTable(title=f"segmentation, {n} case(s): mean ± std")
        table.add_column("label")
        table.add_column("Dice", numeric=True)
        table.add_column("HD95 (mm)", numeric=True)
        for lab in report.labels:
            table.add_row(str(lab), _mean_std(stats[f"dice_{lab}"]), _mean_std(stats[f"hd95_{lab}"]))
        console.print(table)
        return
    from voxdiff.metrics import IMAGE_METRICS

    image_keys = [*IMAGE_METRICS, "data_range"]
    table = FitTable(title=f"image metrics, {n} case(s)")
    table.add_column("case")
    for k in image_keys:
        table.add_column(k.upper() if k != "data_range" else "range", numeric=True)
    if n <= _MAX_TABLE_ROWS:
        for pair, r in zip(report.pairs, report.scores):
            table.add_row(escape(pair.case), *(_fmt(r[k]) for k in image_keys))
    if n > 1:
        table.add_row("mean ± std", *(_mean_std(stats[k]) for k in image_keys), style="bold")
    console.print(table)
    if report.mode == "pet":
        # One row per metric: the PET set is too wide for one row per case.
        table = FitTable(title=f"PET metrics, {n} case(s): mean ± std")
        table.add_column("metric")
        table.add_column("value", numeric=True)
        for k in report.keys:
            if k not in image_keys:
                table.add_row(k, _mean_std(stats[k]))
        console.print(table)
