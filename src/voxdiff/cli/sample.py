"""``voxdiff sample``: draw volumes from an unconditional (synthesis) model."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from voxdiff.cli.app import OVERWRITE_HELP, app, checkpoint_file, command_part, console, progress_bar


def sample_paths(output: Path, count: int) -> list[Path]:
    """The output file of each draw: ``{i}`` in the name numbers them."""
    from voxdiff.errors import VoxdiffError
    from voxdiff.io import check_writable_dir

    paths = [Path(str(output).replace("{i}", str(i))) for i in range(count)]
    if count > 1 and len(set(paths)) == 1:
        raise VoxdiffError(f"{output}: with --count > 1 put '{{i}}' in the output name to number the samples")
    for p in paths:
        check_writable_dir(p)
    return paths


@app.command()
def sample(
    model: str = typer.Option(..., "--model", "-m", help="Synthesis checkpoint (.pt or run folder) or pretrained:NAME."),
    output: Path = typer.Option(..., "--output", "-o", help="Output volume; '{i}' is replaced by the sample number."),
    steps: Optional[int] = typer.Option(None, "--steps", "-k", help="Sampling steps (respaced)."),
    seed: int = typer.Option(0, "--seed", help="Random seed."),
    count: int = typer.Option(1, "--count", "-n", min=1, help="Number of volumes to draw."),
    eta: Optional[float] = typer.Option(None, "--eta", help="0 = DDIM (deterministic), 1 = DDPM (ancestral)."),
    sampler: Optional[str] = typer.Option(None, "--sampler", help="Sampler (default: the model's): ddpm | ddim | dpmsolver++."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda."),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
) -> None:
    """Draw new volumes from a synthesis (IDM/DDPM) model, in the training data's geometry and units.

    Draws follow one random stream: with the same --seed, sample i is the same whatever --count.

    Example: [cyan]voxdiff sample -m runs/idm/last.pt -o sample_{i}.nii.gz --count 4 --steps 50 --seed 1[/]

    Example: [cyan]voxdiff sample -m runs/idm/last.pt -o fast_{i}.nii.gz --count 4 --sampler dpmsolver++ --steps 10[/]
    """
    import torch

    from voxdiff.pipelines import load_pipeline
    from voxdiff.tasks import tasks_for_entry_point

    from voxdiff.io.guard import check_path_plan

    paths = sample_paths(output, count)
    check_path_plan({"--model": checkpoint_file(model)}, {"--output": paths}, existing=None if overwrite else "--overwrite")
    _, dev = command_part(None, None, device)
    pipe = load_pipeline(model, device=dev, task=tasks_for_entry_point("sample"))
    pipe.schedule(steps=steps, eta=eta, sampler=sampler)  # option errors before the first draw
    g = torch.Generator().manual_seed(int(seed))
    for path in paths:
        with progress_bar(f"sample -> {path.name}") as prog:
            out = pipe(steps=steps, eta=eta, sampler=sampler, generator=g, progress=prog)
        out.save({"output": path})
        console.print(f"wrote {path}", highlight=False, markup=False)
