"""``voxdiff demo``: the first five minutes, offline, with the shipped models (PET denoising, segmentation, synthesis)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from voxdiff.cli.app import app, console


def print_tables(tables) -> None:
    """Print a demo's :class:`~voxdiff.demo.common.DemoTable` s whole (numbers never cut)."""
    from rich.markup import escape

    from voxdiff.cli.tables import FitTable

    for t in tables:
        table = FitTable(title=t.title, caption=t.caption, title_style="")
        for header, numeric in t.columns:
            table.add_column(header, numeric=numeric)
        for row in t.rows:
            table.add_row(*(escape(str(cell)) for cell in row))  # model paths, case names: not markup
        console.print(table)


@app.command()
def demo(
    out_dir: Path = typer.Option(Path("voxdiff-demo"), "--out-dir", "-o", help="Output folder (created if missing)."),
    task: str = typer.Option("translate", "--task", help="translate (PET denoising), segment (CSF/GM/WM with PD-DDPM) or synthesize (new T1 heads)."),
    steps: Optional[int] = typer.Option(None, "--steps", "-k", help="Sampling steps (default: the model's; synthesize: 15)."),
    samples: int = typer.Option(4, "--samples", "-n", help="Samples: translate/segment average them (uncertainty = their spread); synthesize draws this many volumes."),
    seed: int = typer.Option(0, "--seed", help="Seed of the simulated noise and of the sampler."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Replace the task's pretrained model (checkpoint or pretrained:NAME)."),
    preseg_model: Optional[str] = typer.Option(None, "--preseg-model", help="segment: replace pretrained:tissue-preseg."),
    start_step: Optional[int] = typer.Option(None, "--start-step", "-t", help="segment: t', where the pre-segmentation enters the chain (default: the model's)."),
    sampler: Optional[str] = typer.Option(None, "--sampler", help="synthesize: dpmsolver++ (default) | ddim | ddpm."),
    size: str = typer.Option("full", "--size", hidden=True, help="full (whole head) or small (a 32^3 crop, for tests)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace the files of an earlier demo in --out-dir (refused otherwise)."),
) -> None:
    """Show a shipped model at work on the MNI152 template inside nilearn (no data, no network).

    --task translate (default): builds an FDG-like PET from the template, simulates full-count and
    5%-count images as the model's training data were made and denoises the low-count image with
    pretrained:pet-denoise; writes low/ppdm/full/uncertainty/brain_mask .nii.gz, montage.png,
    metrics.csv and metrics.json. About a minute on a laptop CPU.

    --task segment: the template T1 on the IXI grid, segmented into CSF/GM/WM by pretrained:tissue-preseg
    and PD-DDPM (pretrained:tissue-pdddpm); Dice against the template's own tissue maps.

    --task synthesize: new T1 heads from pretrained:ixi-synthesis (DPM-Solver++), with distribution
    checks next to the template's.

    Example: [cyan]voxdiff demo --out-dir demo/[/]

    Example: [cyan]voxdiff demo --task segment --out-dir demo-seg/[/]
    """
    from voxdiff.demo import run_demo
    from voxdiff.errors import VoxdiffError

    if size not in ("full", "small"):
        raise VoxdiffError(f"--size must be full or small, got '{size}'")
    from voxdiff.cli.app import checkpoint_file
    from voxdiff.demo import DEMO_FILES, SEGMENT_FILES, synthesis_files
    from voxdiff.io.guard import check_path_plan

    names = {"translate": DEMO_FILES, "segment": SEGMENT_FILES}.get(task) or synthesis_files(max(int(samples), 1))
    check_path_plan({"--model": checkpoint_file(model), "--preseg-model": checkpoint_file(preseg_model)},
                    {"--out-dir": [out_dir / n for n in names]}, existing=None if overwrite else "--overwrite")
    summary = run_demo(out_dir, task=task, steps=steps, samples=samples, seed=seed,
                       crop=32 if size == "small" else None, model=model, preseg_model=preseg_model,
                       start_step=start_step, sampler=sampler, console=console)
    print_tables(summary.get("tables", []))
