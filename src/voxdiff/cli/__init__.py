"""Command-line interface: ``voxdiff COMMAND --help`` documents each command with an example."""

from __future__ import annotations

import errno
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
    "voxdiff.cli.predict",
    "voxdiff.cli.bench",
    "voxdiff.cli.demo",
    "voxdiff.cli.export",
]
for _name in _COMMAND_MODULES:
    importlib.import_module(_name)


#: OSErrors of the machine rather than of voxdiff: reported like user errors (one line, exit 2)
#: wherever they escape, e.g. a disk that fills while a log or a plot is written.
_ENVIRONMENT_ERRNOS = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC), errno.EFBIG, errno.EROFS}


def _print_error(text: str) -> None:
    # One line, whatever the underlying library put in its message.
    from rich.markup import escape

    message = escape(" ".join(text.split()))  # brackets in paths/messages are not markup
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``voxdiff`` console script; user errors exit with code 2."""
    try:
        app(args=argv, prog_name="voxdiff")
    except VoxdiffError as exc:
        _print_error(str(exc))
        sys.exit(exc.exit_code)
    except OSError as exc:
        if exc.errno not in _ENVIRONMENT_ERRNOS:
            raise
        where = exc.filename if exc.filename is not None else "writing an output"
        _print_error(f"{where}: {(exc.strerror or str(exc)).lower()}")
        sys.exit(VoxdiffError.exit_code)
    except KeyboardInterrupt:
        err_console.print("[bold red]interrupted[/]")
        sys.exit(130)
