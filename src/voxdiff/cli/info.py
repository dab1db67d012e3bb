"""``voxdiff info``: geometry and intensity summary of volumes (files or DICOM series folders)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import typer
from rich.markup import escape

from voxdiff.cli.app import app, console
from voxdiff.cli.tables import FitTable
from voxdiff.io import load_volume


@app.command()
def info(
    paths: list[Path] = typer.Argument(..., help="Volume files (.nii, .nii.gz, .mha, .nrrd, .hv) or DICOM "
                                      "series folders."),
    series_uid: Optional[str] = typer.Option(None, "--series-uid", help="The DICOM series to read when a "
                                             "folder holds several (SeriesInstanceUID)."),
    units: Optional[str] = typer.Option(None, "--units", help="'suv': show a DICOM PET series in SUV "
                                        "body-weight instead of its stored Bq/ml."),
) -> None:
    """Print each volume's shape, spacing, orientation, stored dtype and intensity range.

    Example: [cyan]voxdiff info ../shared/data/ixi-t1-2mm/t1/IXI012-HH-1211.nii.gz[/]

    Example (DICOM PET in SUV): [cyan]voxdiff info pet_series/ --units suv[/]
    """
    # A singular or non-finite affine is reported (orientation column), not refused.
    vols = [(path, load_volume(path, allow_nonfinite=True, series_uid=series_uid, units=units,
                                     allow_bad_affine=True)) for path in paths]
    with_units = any(v.meta.get("units") for _, v in vols)
    table = FitTable(title="volumes")
    table.add_column("file")
    table.add_column("shape", numeric=True)
    table.add_column("spacing (mm)", numeric=True, short="mm")
    table.add_column("orientation", numeric=True, short="axes", justify="left")
    table.add_column("dtype", numeric=True, justify="left")
    if with_units:
        table.add_column("units", numeric=True, justify="left")
    for col in ("min", "max", "mean"):
        table.add_column(col, numeric=True)
    for path, v in vols:
        finite = v.array[np.isfinite(v.array)]
        lo, hi, mean = (float(finite.min()), float(finite.max()), float(finite.mean())) if finite.size else (np.nan,) * 3
        table.add_row(
            escape(str(path)), "x".join(map(str, v.shape)), "x".join(f"{s:g}" for s in v.spacing),
            v.orientation, str(v.disk_dtype), *([v.meta.get("units") or ""] if with_units else []),
            f"{lo:.6g}", f"{hi:.6g}", f"{mean:.6g}",
        )
    console.print(table)
