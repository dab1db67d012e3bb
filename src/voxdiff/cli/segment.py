"""``voxdiff segment``: PD-DDPM segmentation (diffusion started from a pre-segmentation).

PD-DDPM forward-diffuses a pre-segmentation (a label file from any tool, or the argmax of a
trained ``preseg`` network) to an intermediate timestep ``t'`` and runs the reverse process
from there with ``K`` steps, far fewer than from pure noise. ``N`` samples (batched) give
the mean class probabilities, whose argmax is the segmentation, and a voxel-wise
uncertainty map. ``--mode vanilla`` samples from pure noise instead (all ``T`` steps, or
``--steps`` respaced). A ``preseg`` checkpoint given as ``--model`` is run on its own.
The work is done by :mod:`voxdiff.pipelines`; this module only parses options.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from voxdiff.cli.app import (INFERENCE_OPTIONS, app, checkpoint_file, command_part, console, describe_run,
                             progress_bar, say)
from voxdiff.errors import VoxdiffError

#: ``--uncertainty-kind`` -> the pipeline output it writes.
UNCERTAINTY_KINDS = {"entropy": "entropy", "variance": "variance", "mi": "mutual_information"}


@app.command()
def segment(
    model: str = typer.Option(..., "--model", "-m", help="PD-DDPM 'segmentation' checkpoint (or a 'preseg' one, run alone)."),
    input: Path = typer.Option(..., "--input", "-i", help="Image to segment (normalised as in training), or a folder of them."),
    output: Path = typer.Option(..., "--output", "-o", help="Label map (integers 0..K-1) in the input's geometry (a folder for a folder input)."),
    preseg: Optional[Path] = typer.Option(None, "--preseg", help="Pre-segmentation label file (any tool; same grid, labels 0..K-1); for a folder input, a folder of them named like the images."),
    preseg_model: Optional[str] = typer.Option(None, "--preseg-model", help="A trained 'preseg' checkpoint to produce the pre-segmentation."),
    start_step: Optional[int] = typer.Option(None, "--start-step", "-t", help="t': timestep the pre-segmentation is diffused to (default: the model's)."),
    steps: Optional[int] = typer.Option(None, "--steps", "-k", help="Reverse steps K (pd default: the model's; vanilla: all T)."),
    samples: int = typer.Option(1, "--samples", "-n", min=1, help="Samples N (batched) averaged into the mean mask."),
    uncertainty: Optional[Path] = typer.Option(None, "--uncertainty", "-u", help="Write the voxel-wise uncertainty map here (file or folder)."),
    uncertainty_kind: str = typer.Option("entropy", "--uncertainty-kind", help="entropy (of the mean) | variance | mi (mutual information)."),
    probs: Optional[Path] = typer.Option(None, "--probs", help="Write the mean class probabilities here (4D NIfTI, X,Y,Z,K; file or folder)."),
    seed: int = typer.Option(0, "--seed", help="Random seed; every case uses it."),
    mode: Optional[str] = typer.Option(None, "--mode", help="pd (start from the pre-segmentation; default) | vanilla (from pure noise)."),
    eta: Optional[float] = typer.Option(None, "--eta", help="Sampler stochasticity: 0 DDIM, 1 DDPM (default: the model's)."),
    sampler: Optional[str] = typer.Option(None, "--sampler", help="Sampler (default: the model's): ddpm | ddim | dpmsolver++."),
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
    """Segment an image with PD-DDPM, starting the diffusion from a pre-segmentation.

    The pre-segmentation (--preseg FILE or --preseg-model CKPT) is forward-diffused to t' (--start-step).
    K reverse steps (--steps) of N batched samples (--samples) cost K x N network evaluations.
    The mean probabilities give the labels (--output) and an uncertainty map (--uncertainty).
    --mode vanilla samples from pure noise instead; a preseg --model is run on its own.
    Given a folder, every image in it is segmented into the --output folder under its own file
    name; --part-id/--num-parts (or torchrun) split the cases over processes.

    Example: [cyan]voxdiff segment -m runs/seg_pdddpm/last.pt --preseg-model runs/seg_preseg/last.pt -i t1.nii.gz -o seg.nii.gz -t 250 -k 5 -n 4 -u unc.nii.gz[/]

    Example: [cyan]voxdiff segment -m runs/seg_pdddpm/last.pt --preseg other_tool.nii.gz -i t1.nii.gz -o seg.nii.gz[/]

    Example: [cyan]voxdiff segment -m runs/seg_preseg/last.pt -i t1.nii.gz -o preseg.nii.gz[/]

    Example: [cyan]voxdiff segment -m pd.pt --preseg nnunet_out/ -i images/ -o seg/ --part-id 0 --num-parts 2[/]
    """
    from voxdiff.pipelines import load_pipeline, predict_cases
    from voxdiff.pipelines.pipeline import check_output_suffix
    from voxdiff.tasks import tasks_for_entry_point
    from voxdiff.tasks.base import OutputSpec

    if uncertainty_kind not in UNCERTAINTY_KINDS:
        raise VoxdiffError(f"--uncertainty-kind must be one of {', '.join(UNCERTAINTY_KINDS)}, got '{uncertainty_kind}'")
    if preseg is not None and preseg_model is not None:
        raise VoxdiffError("give either --preseg FILE or --preseg-model CKPT, not both")
    if mode == "vanilla" and (preseg is not None or preseg_model is not None):
        raise VoxdiffError("--mode vanilla samples from pure noise; drop --preseg / --preseg-model")
    if probs is not None:
        check_output_suffix(OutputSpec("probabilities", ""), probs, "--probs")
    part, dev = command_part(part_id, num_parts, device)
    unc_name = UNCERTAINTY_KINDS[uncertainty_kind]
    outputs = {"labels": output, unc_name: uncertainty, "probs": probs}
    options = dict(steps=steps, samples=samples, seed=seed, eta=eta, sampler=sampler, start_step=start_step,
                   mode=mode, sw_roi=sw_roi, units=units, series_uid=series_uid)

    def load():
        return load_pipeline(model, device=dev, task=tasks_for_entry_point("segment"), start_model=preseg_model)

    res = predict_cases(load, input, outputs, options=options, start=preseg, start_name="preseg",
                        output_options={"labels": "--output", unc_name: f"--uncertainty-kind {uncertainty_kind}",
                                        "probs": "--probs"},
                        output_suffix={"probs": ".nii.gz"}, part=part, skip_existing=skip_existing, output_format=output_format,
                        log=say, progress_factory=lambda: progress_bar(f"segment ({mode or 'pd'})"),
                        inputs={"--model": checkpoint_file(model), "--preseg-model": checkpoint_file(preseg_model)},
                        overwrite=overwrite)
    if hasattr(res, "info"):
        console.print(describe_run(res.info, {k: v for k, v in outputs.items() if v is not None}),
                      highlight=False, markup=False)
