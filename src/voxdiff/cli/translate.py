"""``voxdiff translate``: volume-to-volume translation (PPDM, the DDPM baselines, the regression UNet)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from voxdiff.cli.app import (INFERENCE_OPTIONS, app, checkpoint_file, command_part, describe_run,
                             progress_bar, say)

#: Tasks this command serves: every model whose inference contract names ``translate``.
SAMPLER_HELP = "Sampler (default: the model's): ddpm | ddim | dpmsolver++ for DDPM models, bridge for PPDM."


def translate_tasks() -> tuple[str, ...]:
    """Registered tasks served by ``voxdiff translate``."""
    from voxdiff.tasks import tasks_for_entry_point

    return tasks_for_entry_point("translate")


@app.command()
def translate(
    model: str = typer.Option(..., "--model", "-m", help="Checkpoint (.pt, or a run folder) or pretrained:NAME."),
    input: Path = typer.Option(..., "--input", "-i", help="Source volume (e.g. low-count PET, T1), or a folder of them."),
    output: Path = typer.Option(..., "--output", "-o", help="Output volume in the input's geometry (a folder for a folder input)."),
    steps: Optional[int] = typer.Option(None, "--steps", "-k", help="Sampling steps (default: the model's)."),
    samples: int = typer.Option(1, "--samples", "-n", min=1, help="Stochastic samples to average."),
    uncertainty: Optional[Path] = typer.Option(None, "--uncertainty", "-u", help="Write the voxel-wise std over samples here (file or folder)."),
    seed: int = typer.Option(0, "--seed", help="Random seed (stochastic sampling); every case uses it."),
    eta: Optional[float] = typer.Option(None, "--eta", help="Sampler stochasticity: 0 deterministic, 1 fully stochastic."),
    sampler: Optional[str] = typer.Option(None, "--sampler", help=SAMPLER_HELP),
    condition: Optional[list[str]] = typer.Option(None, "--condition", help="A scalar condition the model was trained with, NAME=VALUE (e.g. dose=5 for the percent of full dose); repeatable. Without it, a model trained with condition dropout runs blind."),
    units: Optional[str] = INFERENCE_OPTIONS["units"](),
    series_uid: Optional[str] = INFERENCE_OPTIONS["series_uid"](),
    output_format: str = INFERENCE_OPTIONS["output_format"](),
    device: str = INFERENCE_OPTIONS["device"](),
    sw_roi: Optional[int] = INFERENCE_OPTIONS["sw_roi"](),
    part_id: Optional[int] = INFERENCE_OPTIONS["part_id"](),
    num_parts: Optional[int] = INFERENCE_OPTIONS["num_parts"](),
    skip_existing: bool = INFERENCE_OPTIONS["skip_existing"](),
    overwrite: bool = INFERENCE_OPTIONS["overwrite"](),
) -> None:
    """Translate a source volume into the target contrast/dose with a trained PPDM (or a baseline).

    The output is written in the source file's geometry and the target's intensity units.
    With --samples N --uncertainty U, U holds the voxel-wise standard deviation over N
    stochastic samples. Serves PPDM ('translation'), the conditional DDPM baselines
    ('translation_ddpm') and the supervised UNet ('regression'). Given a folder, every volume
    in it is translated into the --output folder under its own file name; --part-id/--num-parts
    (or torchrun) split the cases over processes.

    Example: [cyan]voxdiff translate -m runs/pet/last.pt -i low.nii.gz -o denoised.nii.gz --steps 10[/]

    Example: [cyan]torchrun --nproc_per_node 4 -m voxdiff translate -m runs/pet/last.pt -i lowdose/ -o denoised/ --device cuda[/]
    """
    from voxdiff.errors import VoxdiffError
    from voxdiff.pipelines import load_pipeline, predict_cases
    from voxdiff.tasks.conditions import parse_conditions

    if uncertainty is not None and samples < 2:
        raise VoxdiffError("--uncertainty needs --samples 2 or more (the std over stochastic samples)")
    part, dev = command_part(part_id, num_parts, device)
    options = dict(steps=steps, samples=samples, seed=seed, eta=eta, sampler=sampler, sw_roi=sw_roi, units=units,
                   series_uid=series_uid, conditions=parse_conditions(condition))
    outputs = {"output": output, "std": uncertainty}
    res = predict_cases(lambda: load_pipeline(model, device=dev, task=translate_tasks()), input, outputs,
                        options=options, output_options={"output": "--output", "std": "--uncertainty"},
                        part=part, skip_existing=skip_existing, output_format=output_format, log=say,
                        progress_factory=lambda: progress_bar("translate"),
                        inputs={"--model": checkpoint_file(model)}, overwrite=overwrite)
    if hasattr(res, "info"):
        say(describe_run(res.info, {k: v for k, v in outputs.items() if v is not None}))
