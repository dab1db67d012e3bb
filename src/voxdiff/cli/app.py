"""The typer application object and helpers shared by every command module."""

from __future__ import annotations

import typer
from rich.console import Console

app = typer.Typer(
    name="voxdiff",
    help=(
        "Diffusion models for whole 3D medical volumes (CT, MRI, PET).\n\n"
        "Translation (PPDM), invertible diffusion (IDM) and pre-segmentation diffusion "
        "segmentation (PD-DDPM) on one GPU or a laptop CPU. Every command has --help with an example."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)
bench_app = typer.Typer(help="Benchmarks: memory and time of training steps, sampling speed.",
                        no_args_is_help=True)
app.add_typer(bench_app, name="bench")

console = Console()
err_console = Console(stderr=True)
