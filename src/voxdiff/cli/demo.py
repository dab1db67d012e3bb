"""``voxdiff demo``: the first five minutes, offline, with the shipped PET denoising model."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from voxdiff.cli.app import app, console


@app.command()
def demo(
    out_dir: Path = typer.Option(Path("voxdiff-demo"), "--out-dir", "-o", help="Output folder (created if missing)."),
    task: str = typer.Option("translate", "--task", help="translate (PET denoising); segment and synthesize have no shipped model yet."),
    steps: Optional[int] = typer.Option(None, "--steps", "-k", help="Sampling steps (default: the model's, 5)."),
    samples: int = typer.Option(4, "--samples", "-n", help="Stochastic samples: output = their mean, uncertainty = their std."),
    seed: int = typer.Option(0, "--seed", help="Seed of the simulated noise and of the sampler."),
    size: str = typer.Option("full", "--size", hidden=True, help="full (whole head) or small (a 32^3 crop, for tests)."),
) -> None:
    """Denoise a simulated 5%-dose brain PET with the shipped PPDM model (no data, no network).

    Builds an FDG-like PET from the MNI152 template inside nilearn, simulates full-count and 5%-count
    images as the model's training data were made, denoises the low-count image with pretrained:pet-denoise
    (voxdiff translate's code path) and writes low/ppdm/full/uncertainty/brain_mask .nii.gz, montage.png,
    metrics.csv and metrics.json to --out-dir. About a minute on a laptop CPU.

    Example: [cyan]voxdiff demo --out-dir demo/[/]
    """
    from voxdiff.demo import run_demo
    from voxdiff.errors import VoxdiffError

    if size not in ("full", "small"):
        raise VoxdiffError(f"--size must be full or small, got '{size}'")
    run_demo(out_dir, task=task, steps=steps, samples=samples, seed=seed, crop=32 if size == "small" else None,
             console=console)
