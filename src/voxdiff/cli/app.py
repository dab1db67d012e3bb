"""The typer application object and helpers shared by every command module."""

from __future__ import annotations

import functools
import inspect
from pathlib import Path

import typer
from rich.console import Console


def _checked(fn):
    """``fn`` with its ``seed`` / ``device`` arguments checked first (:func:`voxdiff.config.check_seed` /
    :func:`~voxdiff.config.check_device`): a huge seed or a GPU this machine lacks is one sentence."""
    names = set(inspect.signature(fn).parameters)
    if not names & {"seed", "device"}:
        return fn

    @functools.wraps(fn)  # typer reads the signature through __wrapped__
    def wrapper(*args, **kwargs):
        from voxdiff.config import check_device, check_seed

        if kwargs.get("seed") is not None:
            kwargs["seed"] = check_seed(kwargs["seed"], "--seed")
        if isinstance(kwargs.get("device"), str):
            kwargs["device"] = check_device(kwargs["device"], "--device")
        return fn(*args, **kwargs)

    return wrapper


class _CheckedTyper(typer.Typer):
    """A Typer whose commands get the shared ``--seed`` and ``--device`` checks (one function each)."""

    def command(self, *args, **kwargs):
        """As :meth:`typer.Typer.command`; the module keeps the undecorated function."""
        register = super().command(*args, **kwargs)

        def decorator(fn):
            register(_checked(fn))
            return fn

        return decorator


app = _CheckedTyper(
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
bench_app = _CheckedTyper(help="Benchmarks: memory and time of training steps, sampling speed.",
                        no_args_is_help=True)
app.add_typer(bench_app, name="bench")

console = Console()
err_console = Console(stderr=True)


def say(text: str) -> None:
    """Print a plain line (paths, case names) on stdout: never read as rich markup or highlighted.

    Every line that interpolates a user's path goes through this (or escapes it with
    :func:`rich.markup.escape` inside styled text), so ``out/[test]/a.nii.gz`` prints as it is.
    """
    console.print(text, markup=False, highlight=False, soft_wrap=True)


class progress_bar:
    """A transient rich progress bar as a context manager yielding a ``progress(i, n)`` callback."""

    def __init__(self, description: str, show: bool = True) -> None:
        self.description, self.show = description, show

    def __enter__(self):
        from rich.progress import Progress

        self._bar = Progress(console=console, transient=True, disable=not self.show)
        self._bar.__enter__()
        from rich.markup import escape

        tid = self._bar.add_task(escape(self.description), total=None)  # a file name is not markup
        return lambda i, n: self._bar.update(tid, completed=i, total=n)

    def __exit__(self, *exc):
        return self._bar.__exit__(*exc)


def checkpoint_file(spec: str | Path | None) -> Path | None:
    """The file a ``--model``-like option reads (a run folder's ``last.pt``), for path plans; None for
    ``pretrained:NAME`` or nothing."""
    if spec is None or str(spec).startswith("pretrained:"):
        return None
    path = Path(spec)
    return path / "last.pt" if path.is_dir() else path


OVERWRITE_HELP = "Replace existing output files (without it, an existing output is refused)."


def command_part(part_id, num_parts, device: str):
    """This process's share of a folder's cases and its device (torchrun ranks get their own GPU)."""
    from voxdiff.cases import resolve_part
    from voxdiff.train.distributed import rank_device

    return resolve_part(part_id, num_parts), str(rank_device(device))


def describe_run(info: dict, written: dict) -> str:
    """One line for a finished prediction: what was written and what it cost."""
    mode = info.get("mode")
    if mode == "preseg":
        desc = "preseg model"
    elif mode == "pd":
        desc = f"pd: t'={info['start_step']}, K={info['steps']}"
    elif mode == "vanilla":
        desc = f"vanilla: K={info['steps']} from noise"
    else:
        desc = f"{info['steps']} steps"
    if info.get("sampler"):
        desc += f", {info['sampler']}"
    paths = [str(p) for p in written.values()]
    return (f"wrote {paths[0]} ({desc}, {info['samples']} sample(s), {info['nfe']} network evaluations)"
            + (f" and {', '.join(paths[1:])}" if len(paths) > 1 else ""))


#: Options every inference command shares (translate, segment, predict): one definition each.
INFERENCE_OPTIONS = {
    "units": lambda: typer.Option(None, "--units", help="Read the input in these units: suv (a DICOM PET series "
                                  "in Bq/ml -> SUV body-weight; outputs go back to Bq/ml)."),
    "series_uid": lambda: typer.Option(None, "--series-uid", help="The series to read from a DICOM folder holding several."),
    "output_format": lambda: typer.Option("auto", "--output-format", help="auto (NIfTI etc. by extension; DICOM for a "
                                          "folder named 'dicom') | nifti | dicom (a derived series; labels as DICOM SEG)."),
    "device": lambda: typer.Option("cpu", "--device", help="cpu or cuda (under torchrun: this rank's GPU)."),
    "sw_roi": lambda: typer.Option(None, "--sw-roi", help="Force sliding-window inference with this patch side."),
    "part_id": lambda: typer.Option(None, "--part-id", help="Run only this share of a folder's cases (0-based)."),
    "num_parts": lambda: typer.Option(None, "--num-parts", help="Number of shares (default: torchrun's WORLD_SIZE, else 1)."),
    "skip_existing": lambda: typer.Option(False, "--skip-existing", help="Skip cases whose outputs exist and read back "
                                          "complete (resume a pre-empted job)."),
    "overwrite": lambda: typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
}
