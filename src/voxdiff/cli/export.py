"""``voxdiff export``: strip a training checkpoint to an inference-only model file."""

from __future__ import annotations

from pathlib import Path

import typer

from voxdiff.cli.app import OVERWRITE_HELP, app, checkpoint_file, say


@app.command()
def export(
    checkpoint: Path = typer.Argument(..., help="Training checkpoint (.pt) or run folder."),
    output: Path = typer.Argument(..., help="Model file to write (.pt)."),
    half: bool = typer.Option(False, "--half", help="Store weights as float16 (half the size; loaded back as float32)."),
    raw: bool = typer.Option(False, "--raw", help="Export the raw weights instead of the EMA weights."),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
) -> None:
    """Write an inference-only copy of a checkpoint: one set of weights, config and normalisation.

    No optimizer, grad-scaler or RNG state (it cannot resume training); loads with weights_only=True
    wherever a checkpoint is accepted (voxdiff translate -m OUTPUT), and as pretrained:NAME once
    copied to voxdiff/pretrained/NAME.pt.

    Example: [cyan]voxdiff export runs/pet_ppdm/last.pt pet-denoise.pt[/]
    """
    from voxdiff.errors import VoxdiffError
    from voxdiff.export import export_model
    from voxdiff.io import check_writable_dir

    if output.suffix != ".pt":
        raise VoxdiffError(f"{output}: the exported model file must end in .pt")
    from voxdiff.io.guard import check_path_plan

    check_writable_dir(output)
    # A training checkpoint is never replaced by its inference-only copy, whatever the spelling.
    check_path_plan({"CHECKPOINT": checkpoint_file(checkpoint)}, {"OUTPUT": output},
                    existing=None if overwrite else "--overwrite")
    info = export_model(checkpoint, output, use_ema=not raw, half=half)
    say(f"wrote {info['output']} ({info['bytes'] / 1e6:.1f} MB, {info['parameters']:,} parameters, "
        f"{info['weights']} weights as {info['storage_dtype']})")
