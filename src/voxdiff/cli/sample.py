"""``voxdiff sample``: draw volumes from an unconditional (synthesis) model."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import torch
import typer

from voxdiff.cli.app import app, console


def sample_volumes(model: str | Path, output: Path, *, steps: Optional[int] = None, seed: int = 0,
                   count: int = 1, eta: Optional[float] = None, device: str = "cpu",
                   show_progress: bool = True) -> list[Path]:
    """Sample ``count`` volumes into ``output`` (``{i}`` in the name numbers them), in training geometry."""
    from voxdiff.errors import VoxdiffError
    from voxdiff.intensity import normalizer_from_dict
    from voxdiff.io import check_writable_dir, save_volume
    from voxdiff.models import inference_steps, load_model
    from voxdiff.tasks.inference import crop_back, _pad_amounts

    paths = [Path(str(output).replace("{i}", str(i))) for i in range(count)]
    if count > 1 and len(set(paths)) == 1:
        raise VoxdiffError(f"{output}: with --count > 1 put '{{i}}' in the output name to number the samples")
    for p in paths:
        check_writable_dir(p)
    task, ckpt = load_model(model, task="synthesis", device=device)
    geo = ckpt.get("reference_geometry")
    if not geo:
        raise VoxdiffError(f"{model}: checkpoint has no reference geometry to sample in")
    shape = tuple(geo["shape"])
    affine = np.asarray(geo["affine"], dtype=np.float64)
    pads = _pad_amounts(shape, task.required_multiple)
    padded = tuple(s + a + b for s, (a, b) in zip(shape, pads))
    k = inference_steps(task, ckpt, steps)
    norm_d = (ckpt.get("dataset_normalizers") or {}).get(task.output_role)
    norm = normalizer_from_dict(norm_d) if norm_d else None
    g = torch.Generator().manual_seed(int(seed))
    from rich.progress import Progress

    with Progress(console=console, transient=True, disable=not show_progress) as bar:
        tid = bar.add_task("sample", total=k * count)
        for i, path in enumerate(paths):
            out = task.predict({}, steps=k, generator=g, eta=eta, shape=(1, 1, *padded),
                               progress=lambda j, n, i=i: bar.update(tid, completed=i * n + j))
            vol = crop_back(out["output"], pads)[0, 0].float().cpu().numpy()
            if norm is not None:
                vol = np.asarray(norm.inverse(vol), dtype=np.float32)
            save_volume(vol, path, affine=affine)
    return paths


@app.command()
def sample(
    model: str = typer.Option(..., "--model", "-m", help="Synthesis checkpoint (.pt or run folder) or pretrained:NAME."),
    output: Path = typer.Option(..., "--output", "-o", help="Output volume; '{i}' is replaced by the sample number."),
    steps: Optional[int] = typer.Option(None, "--steps", "-k", help="Sampling steps (respaced DDPM/DDIM)."),
    seed: int = typer.Option(0, "--seed", help="Random seed."),
    count: int = typer.Option(1, "--count", "-n", min=1, help="Number of volumes to draw."),
    eta: Optional[float] = typer.Option(None, "--eta", help="0 = DDIM (deterministic), 1 = DDPM (ancestral)."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda."),
) -> None:
    """Draw new volumes from a synthesis (IDM/DDPM) model, in the training data's geometry and units.

    Example: [cyan]voxdiff sample -m runs/idm/last.pt -o sample_{i}.nii.gz --count 4 --steps 50 --seed 1[/]
    """
    paths = sample_volumes(model, output, steps=steps, seed=seed, count=count, eta=eta, device=device)
    for p in paths:
        console.print(f"wrote {p}")
