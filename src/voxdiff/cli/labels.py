"""``voxdiff make-labels``: segmentation targets (a few classes) from a parcellation folder."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from voxdiff.cli.app import app, console
from voxdiff.errors import VoxdiffError


@app.command("make-labels")
def make_labels(
    labels_dir: Path = typer.Option(..., "--labels-dir", help="Folder of parcellations <case>.nii.gz (e.g. DLMUSE)."),
    images_dir: Path = typer.Option(..., "--images-dir", help="Folder of the matching images <case>.nii.gz."),
    out_dir: Path = typer.Option(..., "--out-dir", "-o", help="Where labels/, classes.json and manifest.csv go."),
    preset: Optional[str] = typer.Option(None, "--preset", "-p",
                                         help="tissue | ventricles | hippocampus | hippocampus_lr."),
    classes: Optional[str] = typer.Option(None, "--classes",
                                          help="Custom classes instead of a preset: 'CSF=600+509,GM=601,WM=604' "
                                               "(labels, composite ids or region names; '+' joins)."),
    tables_dir: Optional[Path] = typer.Option(None, "--tables-dir",
                                              help="Folder of muse_single_labels.csv and muse_derived_mapping.csv "
                                                   "(default: the parent of --labels-dir)."),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="Convert only the first N cases."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace the label maps, classes.json and manifest.csv of an earlier run."),
) -> None:
    """Merge parcellation regions into classes 0..K and write a training manifest.

    Writes OUT_DIR/labels/<case>.nii.gz (uint8, in the parcellation's geometry).
    Writes OUT_DIR/manifest.csv (case,image,label) for a segmentation or preseg config, and OUT_DIR/classes.json.
    A case that fails is named at the end (exit 2); the others are written and listed in the manifest.

    Presets: tissue = 1 CSF (600 + 509), 2 GM (601), 3 WM (604); ventricles = lateral ventricles.
    hippocampus = left + right hippocampus; hippocampus_lr = 1 left, 2 right.

    Example: [cyan]voxdiff make-labels --labels-dir ../shared/data/ixi-t1-2mm/labels --images-dir ../shared/data/ixi-t1-2mm/t1 --preset tissue --out-dir ../data/seg-tissue[/]
    """
    from rich.markup import escape
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from voxdiff.data.labels import (PRESETS, make_label_dataset, parse_classes, preset_scheme, read_region_tables,
                                     resolve_classes)

    if (preset is None) == (classes is None):
        raise VoxdiffError("give exactly one of --preset (" + ", ".join(PRESETS) + ") or --classes")
    if preset is not None and preset not in PRESETS:
        raise VoxdiffError(f"unknown label preset '{preset}' (known: {', '.join(PRESETS)})")
    if not labels_dir.is_dir():
        raise VoxdiffError(f"{labels_dir}: --labels-dir is not an existing folder")
    if not images_dir.is_dir():
        raise VoxdiffError(f"{images_dir}: --images-dir is not an existing folder")
    tables = read_region_tables(tables_dir or labels_dir.parent)
    if preset is not None:
        scheme = preset_scheme(preset, tables)
    else:
        names, specs = parse_classes(classes)
        scheme = resolve_classes(specs, tables, names)

    with Progress(TextColumn("[bold]make-labels"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[case]}"),
                  TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=console) as bar:
        tid = bar.add_task("labels", total=None, case="")

        def progress(i: int, n: int, case: str) -> None:
            bar.update(tid, completed=i, total=n, case=escape(case))

        manifest = make_label_dataset(labels_dir, images_dir, out_dir, scheme, limit=limit, progress=progress,
                                      overwrite=overwrite)
    summary = ", ".join(f"{k + 1} {n}" for k, n in enumerate(scheme.class_names))
    console.print(f"wrote {manifest} ({scheme.name}: 0 background, {summary}; "
                  f"set model.num_classes={scheme.num_classes})", markup=False, highlight=False)
