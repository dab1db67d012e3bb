"""``voxdiff predict``: any trained model, dispatched on its checkpoint's task."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from voxdiff.cli.app import (INFERENCE_OPTIONS, app, checkpoint_file, command_part, console, describe_run,
                             progress_bar, say)
from voxdiff.errors import VoxdiffError


def parse_saves(items: list[str]) -> dict[str, Path]:
    """``NAME=PATH`` pairs of ``--save`` as a dict."""
    out: dict[str, Path] = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise VoxdiffError(f"--save '{item}' must look like NAME=PATH (e.g. std=unc.nii.gz)")
        if name in out:
            raise VoxdiffError(f"--save names the output '{name}' twice")
        out[name] = Path(path)
    return out


def describe(pipe) -> str:
    """What a model takes and gives, for ``--describe``."""
    task = pipe.task
    lines = [f"{pipe.path}: task '{task.name}' (named command: voxdiff {task.entry_point})",
             f"  inputs: {', '.join(task.input_roles) or 'none (samples new volumes)'}"]
    if task.start_role:
        lines.append(f"  start: --start FILE or --start-model CKPT (a '{task.start_task}' model)")
    lines.append("  outputs (--save NAME=PATH; -o writes the first):")
    names = [task.primary_output] + [n for n in task.outputs if n != task.primary_output]
    for name in names:
        spec = task.outputs[name]
        need = f", needs --samples {spec.min_samples}" if spec.min_samples > 1 else ""
        lines.append(f"    {name}: {spec.description} ({spec.kind}{need})")
    lines.append(f"  inference defaults: {pipe.inference_config}")
    return "\n".join(lines)


@app.command()
def predict(
    model: str = typer.Option(..., "--model", "-m", help="Any voxdiff checkpoint (.pt or run folder) or pretrained:NAME."),
    input: Optional[Path] = typer.Option(None, "--input", "-i", help="Input volume or folder (none for a synthesis model)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="The model's main output (file, or folder for a folder input)."),
    save: List[str] = typer.Option([], "--save", help="Another output as NAME=PATH (repeatable; see --describe)."),
    start: Optional[Path] = typer.Option(None, "--start", help="Start volume for models that take one (PD-DDPM: a pre-segmentation)."),
    start_model: Optional[str] = typer.Option(None, "--start-model", help="A checkpoint whose output is the start volume."),
    steps: Optional[int] = typer.Option(None, "--steps", "-k", help="Sampling steps (default: the model's)."),
    samples: int = typer.Option(1, "--samples", "-n", min=1, help="Samples to average (ensembles, uncertainty)."),
    seed: int = typer.Option(0, "--seed", help="Random seed; every case uses it."),
    eta: Optional[float] = typer.Option(None, "--eta", help="Sampler stochasticity in [0, 1]."),
    sampler: Optional[str] = typer.Option(None, "--sampler", help="Sampler (default: the model's): ddpm | ddim | dpmsolver++ | bridge."),
    start_step: Optional[int] = typer.Option(None, "--start-step", "-t", help="t' of models that start from a start volume."),
    mode: Optional[str] = typer.Option(None, "--mode", help="Sampling mode of segmentation models: pd | vanilla."),
    units: Optional[str] = INFERENCE_OPTIONS["units"](),
    series_uid: Optional[str] = INFERENCE_OPTIONS["series_uid"](),
    output_format: str = INFERENCE_OPTIONS["output_format"](),
    device: str = INFERENCE_OPTIONS["device"](),
    sw_roi: Optional[int] = INFERENCE_OPTIONS["sw_roi"](),
    part_id: Optional[int] = INFERENCE_OPTIONS["part_id"](),
    num_parts: Optional[int] = INFERENCE_OPTIONS["num_parts"](),
    skip_existing: bool = INFERENCE_OPTIONS["skip_existing"](),
    overwrite: bool = INFERENCE_OPTIONS["overwrite"](),
    describe_only: bool = typer.Option(False, "--describe", help="Print what the model takes and gives, and exit."),
) -> None:
    """Run any trained model: the task stored in the checkpoint decides inputs, sampling and outputs.

    translate, segment and sample are the documented commands of each kind of model; predict
    serves every registered task the same way (a new task needs no new command).

    Example: [cyan]voxdiff predict -m pretrained:pet-denoise --describe[/]

    Example: [cyan]voxdiff predict -m runs/pet/last.pt -i low.nii.gz -o out.nii.gz -n 4 --save std=unc.nii.gz[/]

    Example: [cyan]voxdiff predict -m runs/seg/last.pt --start-model runs/preseg/last.pt -i t1.nii.gz -o seg.nii.gz --save probs=p.nii.gz[/]
    """
    from voxdiff.pipelines import load_pipeline, predict_cases

    extra = parse_saves(save)
    part, dev = command_part(part_id, num_parts, device)
    if describe_only:
        console.print(describe(load_pipeline(model, device=dev)), highlight=False, markup=False, soft_wrap=True)
        return
    if output is None:
        raise VoxdiffError("--output is required (the model's main output)")

    def load():
        return load_pipeline(model, device=dev, start_model=start_model)

    options = dict(steps=steps, samples=samples, seed=seed, eta=eta, sampler=sampler, start_step=start_step,
                   mode=mode, sw_roi=sw_roi, units=units, series_uid=series_uid)
    if input is None:  # a model without inputs: one draw into --output
        from voxdiff.io.guard import check_path_plan

        check_path_plan({"--model": checkpoint_file(model), "--start-model": checkpoint_file(start_model)},
                        {"--output": output, **{f"--save {k}": v for k, v in extra.items()}},
                        existing=None if overwrite else "--overwrite")
        pipe = load()
        if pipe.task.input_roles:
            raise VoxdiffError(f"--input is required: a '{pipe.name}' model needs {', '.join(pipe.task.input_roles)}")
        outputs = {pipe.task.primary_output: output, **extra}
        pipe.check_outputs(outputs, samples)
        with progress_bar("predict") as prog:
            res = pipe(progress=prog, **{k: v for k, v in options.items() if k != "sw_roi"})
        res.save(outputs)
        console.print(describe_run(res.info, outputs), highlight=False, markup=False)
        return
    from voxdiff.io.atomic import check_writable_dir
    from voxdiff.io.guard import check_path_plan

    if not input.is_dir():  # output folders of a folder input are checked (and made) by the plan
        for path in (output, *extra.values()):
            check_writable_dir(path)
        # The path plan before the model is loaded (predict_cases checks it again with the task's output names).
        check_path_plan({"--input": input, "--start": start, "--model": checkpoint_file(model),
                         "--start-model": checkpoint_file(start_model)},
                        {"--output": output, **{f"--save {k}": v for k, v in extra.items()}},
                        existing=None if overwrite else "--overwrite")
    pipe = load()
    outputs = {pipe.task.primary_output: output, **extra}
    res = predict_cases(lambda: pipe, input, outputs, options=options, start=start, start_name="start",
                        output_options={pipe.task.primary_output: "--output",
                                        **{k: f"--save {k}" for k in extra}},
                        part=part, skip_existing=skip_existing, output_format=output_format, log=say,
                        progress_factory=lambda: progress_bar("predict"),
                        inputs={"--model": checkpoint_file(model), "--start-model": checkpoint_file(start_model)},
                        overwrite=overwrite)
    if hasattr(res, "info"):
        console.print(describe_run(res.info, outputs), highlight=False, markup=False)
