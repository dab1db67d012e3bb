"""``voxdiff simulate-pet`` and ``simulate-pet-dataset``: paired low-/full-dose PET on real anatomy."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from voxdiff.cli.app import app, console
from voxdiff.errors import VoxdiffError
from voxdiff.io import Volume, atomic_write_text, check_same_geometry, load_volume, save_volume
from voxdiff.io.atomic import all_or_nothing, full_suffix

SCHEME_HELP = "Label scheme: 'muse' (IXI DLMUSE regions) or 'brainweb' (BrainWeb tissue classes 0-9)."
HEAD_HELP = (
    "Head tissue outside the labelled brain: 'auto' (a mask from the subject's T1 in ../t1/ beside "
    "the labels when present, else 'labels'), 'labels' (labels dilated by 10 mm), 'none' (zero outside "
    "the brain), or the path of an anatomical image to threshold."
)


def _case_id(path: Path) -> str:
    suffix = full_suffix(path)
    return path.name[: -len(suffix)] if suffix else path.name


def _validate(fwhm: float, dose: float, counts: float | None, mean_counts: float, scheme: str) -> None:
    from voxdiff.sim.pet import SCHEMES, check_settings

    if scheme not in SCHEMES:
        raise VoxdiffError(f"unknown --scheme '{scheme}' (use {' or '.join(SCHEMES)})")
    # The library's own check, run before any file is written or any loop starts.
    check_settings(fwhm, dose, counts, mean_counts)


def _head_mask(head: str, labels: Volume, scheme: str) -> tuple[np.ndarray | None, float, str]:
    """(mask or None, margin for the library default, description) for a --head choice."""
    from voxdiff.sim.pet import head_mask_from_image

    if scheme == "brainweb" or head == "none":
        return None, 0.0, "none"
    if head == "labels":
        return None, 10.0, "labels"
    if head == "auto":
        assert labels.path is not None
        t1 = labels.path.parent.parent / "t1" / labels.path.name
        if not t1.is_file():
            return None, 10.0, "labels"
        image_path = t1
    else:
        image_path = Path(head)
    image = load_volume(image_path, role="head image")
    check_same_geometry(labels, image, what="--head image")
    return head_mask_from_image(image, labels.array > 0), 0.0, str(image_path.resolve())


def _simulate_one(label_path: Path, *, case: str, scheme: str, fwhm: float, dose: float, counts: float | None,
                  mean_counts: float, seed: int, head: str, tables: Path | None) -> tuple[Any, dict[str, Any]]:
    from voxdiff.sim.pet import case_seed, simulate_pet

    labels = load_volume(label_path, role="labels")
    mask, margin, head_source = _head_mask(head, labels, scheme)
    try:
        result = simulate_pet(labels, scheme=scheme, fwhm_mm=fwhm, dose_fraction=dose, counts=counts,
                              mean_brain_counts=mean_counts, seed=case_seed(seed, case), head_mask=mask,
                              head_margin_mm=margin, tables_dir=tables)
    except VoxdiffError as exc:
        # Name the file: the simulation itself only sees arrays.
        if str(label_path) in str(exc):
            raise
        raise VoxdiffError(f"{label_path}: {exc}") from exc
    params = {"case": case, "labels": str(label_path.resolve()), "seed_base": seed, **result.params}
    if head_source not in ("none", "labels"):
        params["head_mask"] = f"thresholded {head_source}"
    return result, params


def _write_case(result: Any, params: dict[str, Any], out_dir: Path, case: str, written: list[Path]) -> dict[str, Path]:
    """Write one case's files, appending each to ``written`` (an :func:`all_or_nothing` list)."""
    paths = {"full": out_dir / f"{case}_full.nii.gz", "low": out_dir / f"{case}_low.nii.gz",
             "json": out_dir / f"{case}_pet.json"}
    written.append(save_volume(result.full, paths["full"]))
    written.append(save_volume(result.low, paths["low"]))
    written.append(atomic_write_text(paths["json"], json.dumps(params, indent=2) + "\n"))
    return paths




@app.command("simulate-pet")
def simulate_pet_command(
    labels: Path = typer.Argument(..., help="Integer label map (.nii.gz, .mha, .nrrd, .hv)."),
    out_dir: Path = typer.Option(..., "--out-dir", "-o", help="Output folder (created if missing)."),
    fwhm: float = typer.Option(5.0, "--fwhm", help="Scanner PSF FWHM in mm."),
    dose: float = typer.Option(0.05, "--dose", help="Low-dose fraction of the full-dose counts, in (0, 1]."),
    counts: float | None = typer.Option(None, "--counts", help="Total expected full-dose counts (default: from --mean-counts)."),
    mean_counts: float = typer.Option(200.0, "--mean-counts", help="Mean expected full-dose counts per brain voxel."),
    seed: int = typer.Option(0, "--seed", help="Seed; the subject's noise uses (seed, CRC32 of the case id)."),
    scheme: str = typer.Option("muse", "--scheme", help=SCHEME_HELP),
    head: str = typer.Option("auto", "--head", help=HEAD_HELP),
    case: str | None = typer.Option(None, "--case", help="Case id for the output names (default: the file name)."),
    tables: Path | None = typer.Option(None, "--tables", help="Folder of the MUSE region CSVs (default: found beside the labels)."),
) -> None:
    """Simulate a full-dose / low-dose PET pair on one label map.

    Writes CASE_full.nii.gz and CASE_low.nii.gz (float32, full-dose counts per voxel, label map geometry)
    and CASE_pet.json (all settings, and the low-dose PSNR vs full-dose over the head, data range = full-dose max).

    Example: [cyan]voxdiff simulate-pet ../shared/data/ixi-t1-2mm/labels/IXI012-HH-1211.nii.gz --out-dir pet/[/]
    """
    _validate(fwhm, dose, counts, mean_counts, scheme)
    case = case or _case_id(labels)
    start = time.perf_counter()
    result, params = _simulate_one(labels, case=case, scheme=scheme, fwhm=fwhm, dose=dose, counts=counts,
                                   mean_counts=mean_counts, seed=seed, head=head, tables=tables)
    with all_or_nothing(out_dir) as written:
        paths = _write_case(result, params, out_dir, case, written)
    console.print(
        f"{case}: low-dose ({dose:g}) PSNR vs full-dose [bold]{params['psnr_low_vs_full_db']:.2f} dB[/] "
        f"(data range {params['psnr_data_range']:g}, mean {params['mean_brain_counts']:.0f} counts/brain voxel, "
        f"head: {params['head_mask']}) in {time.perf_counter() - start:.1f} s"
    )
    console.print(f"wrote {paths['full']}, {paths['low']}, {paths['json']}", highlight=False)


@app.command("simulate-pet-dataset")
def simulate_pet_dataset_command(
    labels_dir: Path = typer.Option(..., "--labels-dir", help="Folder of label maps (one subject per file)."),
    out_dir: Path = typer.Option(..., "--out-dir", "-o", help="Output folder (created if missing)."),
    fwhm: float = typer.Option(5.0, "--fwhm", help="Scanner PSF FWHM in mm."),
    dose: float = typer.Option(0.05, "--dose", help="Low-dose fraction of the full-dose counts, in (0, 1]."),
    counts: float | None = typer.Option(None, "--counts", help="Total expected full-dose counts per subject (default: from --mean-counts)."),
    mean_counts: float = typer.Option(200.0, "--mean-counts", help="Mean expected full-dose counts per brain voxel."),
    seed: int = typer.Option(0, "--seed", help="Seed; each subject uses (seed, CRC32 of its id), whatever --limit."),
    scheme: str = typer.Option("muse", "--scheme", help=SCHEME_HELP),
    head: str = typer.Option("auto", "--head", help="'auto', 'labels' or 'none' (see simulate-pet --help)."),
    limit: int | None = typer.Option(None, "--limit", help="Only the first N subjects (sorted by id)."),
    tables: Path | None = typer.Option(None, "--tables", help="Folder of the MUSE region CSVs (default: found beside the labels)."),
) -> None:
    """Build a paired low-/full-dose PET dataset from a folder of label maps.

    Writes CASE_full.nii.gz, CASE_low.nii.gz and CASE_pet.json per subject, then dataset.json (settings, PSNR)
    and manifest.csv (case, source = low dose, target = full dose, label), last: an interrupted run has no manifest.

    Example: [cyan]voxdiff simulate-pet-dataset --labels-dir ../shared/data/ixi-t1-2mm/labels --out-dir ../data/pet-ixi --limit 5[/]
    """
    from voxdiff.data.manifest import SCAN_SUFFIXES, Case, write_manifest

    _validate(fwhm, dose, counts, mean_counts, scheme)
    if head not in ("auto", "labels", "none"):
        raise VoxdiffError(f"--head must be auto, labels or none for a dataset, got '{head}'")
    if limit is not None and limit < 1:
        raise VoxdiffError(f"--limit must be >= 1, got {limit}")
    if not labels_dir.is_dir():
        raise VoxdiffError(f"{labels_dir}: label folder not found")
    files = sorted((p for p in labels_dir.iterdir()
                    if p.is_file() and not p.name.startswith(".") and full_suffix(p).lower() in SCAN_SUFFIXES),
                   key=_case_id)
    if not files:
        raise VoxdiffError(f"{labels_dir}: no label maps ({', '.join(SCAN_SUFFIXES)})")
    files = files[:limit] if limit else files
    cases: list[Case] = []
    psnrs: list[float] = []
    start = time.perf_counter()
    columns = (TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[status]}"), TimeElapsedColumn(), TimeRemainingColumn())
    # A bad label map (or a full disk) removes what this run wrote: no dataset that looks complete.
    with all_or_nothing(out_dir) as written:
        with Progress(*columns, console=console, transient=False) as progress:
            task = progress.add_task("simulating PET", total=len(files), status="")
            for path in files:
                case = _case_id(path)
                result, params = _simulate_one(path, case=case, scheme=scheme, fwhm=fwhm, dose=dose, counts=counts,
                                               mean_counts=mean_counts, seed=seed, head=head, tables=tables)
                paths = _write_case(result, params, out_dir, case, written)
                cases.append(Case(case, {"source": paths["low"], "target": paths["full"], "label": path}))
                psnrs.append(params["psnr_low_vs_full_db"])
                progress.update(task, advance=1, status=f"{case}: {psnrs[-1]:.1f} dB")
        elapsed = time.perf_counter() - start
        summary = {
            "cases": len(cases), "labels_dir": str(labels_dir.resolve()), "scheme": scheme, "fwhm_mm": fwhm,
            "dose_fraction": dose, "counts": counts, "mean_brain_counts": mean_counts, "seed": seed, "head": head,
            "psnr_low_vs_full_db": {"mean": float(np.mean(psnrs)), "std": float(np.std(psnrs)),
                                    "min": float(np.min(psnrs)), "max": float(np.max(psnrs))},
            "seconds": round(elapsed, 1),
            "roles": {"source": "low-dose", "target": "full-dose", "label": "region labels"},
        }
        written.append(atomic_write_text(out_dir / "dataset.json", json.dumps(summary, indent=2) + "\n"))
        manifest = write_manifest(cases, out_dir / "manifest.csv")
    console.print(
        f"{len(cases)} subject(s) in {elapsed:.1f} s ({elapsed / len(cases):.2f} s each); low-dose PSNR "
        f"{summary['psnr_low_vs_full_db']['mean']:.2f} ± {summary['psnr_low_vs_full_db']['std']:.2f} dB; "
        f"manifest {manifest}", highlight=False,
    )
