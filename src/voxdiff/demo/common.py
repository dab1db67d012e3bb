"""What the three demos share: option checks, the output folder, stage lines, progress bars, tables."""

from __future__ import annotations

from rich.markup import escape

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from voxdiff.errors import VoxdiffError


@dataclass
class DemoTable:
    """A table a demo reports (the CLI prints it so that numbers are never cut).

    ``columns`` are ``(header, numeric)`` pairs; ``rows`` hold formatted cells.
    """

    title: str
    columns: list[tuple[str, bool]]
    rows: list[list[str]] = field(default_factory=list)
    caption: str | None = None


def check_counts(*, samples: int, steps: int | None) -> None:
    """Refuse a sample or step count below one (the CLI's exit 2)."""
    if samples < 1:
        raise VoxdiffError(f"--samples must be >= 1, got {samples}")
    if steps is not None and steps < 1:
        raise VoxdiffError(f"--steps must be >= 1, got {steps}")


def check_crop(crop: int | None) -> None:
    """Refuse a test crop too small to hold a UNet's downsampling."""
    if crop is not None and crop < 8:
        raise VoxdiffError(f"the demo crop must be at least 8 voxels, got {crop}")


def require_model(spec: str, task: str) -> str:
    """``spec`` if it can be loaded; for a ``pretrained:`` name that does not ship, one clear sentence."""
    from voxdiff.models import PRETRAINED_PREFIX, pretrained_name, pretrained_names, resolve_model_path

    spec = str(spec)
    name = pretrained_name(spec)
    if name is not None and name not in pretrained_names():
        shipped = ", ".join(f"{PRETRAINED_PREFIX}{n}" for n in pretrained_names())
        raise VoxdiffError(f"the '{task}' demo needs {spec}, which does not ship with this voxdiff yet "
                           f"(shipped: {shipped}); 'voxdiff demo --task translate' (the default) runs the PET denoising demo")
    path = resolve_model_path(spec)
    if not spec.startswith(PRETRAINED_PREFIX) and not path.exists():
        raise VoxdiffError(f"{path}: model checkpoint not found")
    return spec


def prepare_out_dir(out_dir: Path, first_file: str) -> None:
    """Create the output folder (if missing) and check that files can be written into it."""
    from voxdiff.io import check_writable_dir
    from voxdiff.io.atomic import ensure_out_dir

    ensure_out_dir(out_dir)
    check_writable_dir(out_dir / first_file)


def default_console(console):
    """``console`` or a new rich console."""
    if console is None:
        from rich.console import Console

        console = Console()
    return console


@contextlib.contextmanager
def stage(console, description: str, show: bool) -> Iterator[None]:
    """A spinner while a stage runs, then one line with its time."""
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    start = time.perf_counter()
    if show and console.is_terminal:
        with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console,
                      transient=True) as bar:
            bar.add_task(description, total=None)
            yield
    else:
        yield
    if show:
        console.print(f"[green]✓[/] {escape(description)} [dim]{time.perf_counter() - start:.1f} s[/]", highlight=False)


@contextlib.contextmanager
def progress_bar(console, description: str, show: bool) -> Iterator[Any]:
    """A transient rich progress bar; yields the ``progress(i, n)`` callback pipelines take."""
    from rich.progress import Progress

    with Progress(console=console, transient=True, disable=not show) as bar:
        tid = bar.add_task(description, total=None)
        yield lambda i, n: bar.update(tid, completed=i, total=n)


def plural(n: int, word: str) -> str:
    """``1 step``, ``5 steps``."""
    return f"{n} {word}{'' if n == 1 else 's'}"


def csv_text(header: list[str], rows: list[list[Any]]) -> str:
    """A CSV document (``\\n`` line ends) of a header and rows."""
    import csv
    import io

    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()
