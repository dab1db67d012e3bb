"""Command-line interface: ``voxdiff COMMAND --help`` documents each command with an example."""

from __future__ import annotations

import importlib
import sys

from voxdiff.cli.app import app, err_console
from voxdiff.errors import VoxdiffError

# Each module registers its commands on ``app`` when imported.
_COMMAND_MODULES = [
    "voxdiff.cli.info",
    "voxdiff.cli.evaluate",
    "voxdiff.cli.labels",
    "voxdiff.cli.segment",
    "voxdiff.cli.simulate",
    "voxdiff.cli.train",
    "voxdiff.cli.translate",
    "voxdiff.cli.sample",
    "voxdiff.cli.bench",
    "voxdiff.cli.demo",
    "voxdiff.cli.export",
]
for _name in _COMMAND_MODULES:
    importlib.import_module(_name)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``voxdiff`` console script; user errors exit with code 2."""
    try:
        app(args=argv, prog_name="voxdiff")
    except VoxdiffError as exc:
        # One line, whatever the underlying library put in its message.
        from rich.markup import escape

        message = escape(" ".join(str(exc).split()))  # brackets in paths/messages are not markup
        err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        err_console.print("[bold red]interrupted[/]")
        sys.exit(130)
