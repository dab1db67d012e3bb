"""Atomic file writes: a reader never sees a half-written output."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from voxdiff.errors import VoxdiffError


def check_writable_dir(path: str | os.PathLike) -> Path:
    """Return ``path`` as a Path after checking that its folder exists and is writable."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.exists():
        raise VoxdiffError(f"{path}: output folder {parent} does not exist")
    if not parent.is_dir():
        raise VoxdiffError(f"{path}: {parent} is not a folder")
    if not os.access(parent, os.W_OK):
        raise VoxdiffError(f"{path}: output folder {parent} is not writable")
    if path.is_dir():
        raise VoxdiffError(f"{path}: is a folder, expected a file name")
    return path


def ensure_out_dir(out_dir: str | os.PathLike) -> Path:
    """Create an output folder (and parents) or raise one clear error; returns it as a Path."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise VoxdiffError(f"{out_dir}: --out-dir exists and is not a folder")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise VoxdiffError(f"{out_dir}: could not create the output folder ({exc.strerror or exc})") from exc
    return out_dir


def full_suffix(path: Path) -> str:
    """The suffix that decides a file's format, e.g. ``.nii.gz`` rather than ``.gz``."""
    name = path.name.lower()
    for double in (".nii.gz", ".tar.gz", ".rawb.bz2", ".v.bz2"):
        if name.endswith(double):
            return path.name[-len(double):]
    return path.suffix


def case_name(path: str | os.PathLike) -> str:
    """A case's name from its file: the file name without its format suffix (``sub01.nii.gz`` -> ``sub01``)."""
    path = Path(path)
    suffix = full_suffix(path)
    return path.name[: -len(suffix)] if suffix else path.name


def volume_files_by_case(folder: Path, suffixes) -> dict[str, Path]:
    """The files of ``folder`` with one of ``suffixes`` (case-insensitive), keyed by :func:`case_name`.

    Dot files (the temporary files of interrupted atomic writes), other files and sub-folders are
    skipped; two files of one case (``a.nii`` and ``a.nii.gz``) are refused.
    """
    found: dict[str, Path] = {}
    for p in sorted(Path(folder).iterdir()):
        if p.name.startswith(".") or not p.is_file() or full_suffix(p).lower() not in suffixes:
            continue
        case = case_name(p)
        if case in found:
            raise VoxdiffError(f"{folder}: case '{case}' appears twice ({found[case].name} and {p.name})")
        found[case] = p
    return found


def write_error(path: str | os.PathLike, exc: OSError) -> VoxdiffError:
    """The one-line error for an output that could not be written (disk full, quota, size limit...)."""
    if exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        reason = "no space left on device" if exc.errno == errno.ENOSPC else "disk quota exceeded"
        return VoxdiffError(f"{path}: {reason}; nothing was written")
    if exc.errno == errno.EFBIG:
        return VoxdiffError(f"{path}: file too large for this file system or the process's file size limit; "
                            "nothing was written")
    return VoxdiffError(f"{path}: could not write ({exc.strerror or exc}); nothing was written")


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def _output_mode() -> int:
    # mkstemp/mkdtemp create private files; outputs get the usual permissions (0666 minus umask).
    return 0o666 & ~_umask()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only on success.

    The temporary name keeps the full suffix so that format-sniffing writers (nibabel,
    SimpleITK) pick the right format. On any exception the temporary file is removed and
    ``path`` is left untouched; an ``OSError`` (disk full, quota, file size limit, ...)
    becomes one clear :class:`VoxdiffError` naming ``path``.
    """
    path = check_writable_dir(path)
    suffix = full_suffix(path)
    tmp_path: Path | None = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + suffix, dir=path.parent or ".")
        os.close(fd)
        tmp_path = Path(tmp)
        yield tmp_path
        os.chmod(tmp_path, _output_mode())
        os.replace(tmp_path, path)
    except OSError as exc:
        if tmp_path is not None:
            tmp_path.unlink(missing_ok=True)
        raise write_error(path, exc) from exc
    except BaseException:
        if tmp_path is not None:
            tmp_path.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_file_set(path: str | os.PathLike) -> Iterator[Path]:
    """Like :func:`atomic_path` for writers that put companion files beside ``path``.

    A detached header (``.mhd``, ``.nhdr``) names its data file after itself, so a renamed
    temporary header would point at a temporary data file. The writer gets ``path``'s own name
    inside a hidden temporary folder beside it; on success every file written there is moved
    beside ``path`` (``path`` itself last, so it appears only once its data is in place), and
    the folder is removed whatever happens.
    """
    path = check_writable_dir(path)
    tmp_dir: Path | None = None
    moved: list[Path] = []
    try:
        tmp_dir = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent or "."))
        yield tmp_dir / path.name
        mode = _output_mode()
        for f in sorted(tmp_dir.iterdir(), key=lambda f: f.name == path.name):
            os.chmod(f, mode)
            os.replace(f, path.parent / f.name)
            moved.append(path.parent / f.name)
    except BaseException as exc:
        if path not in moved:  # no header: its companions alone are no output
            for f in moved:
                f.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise write_error(path, exc) from exc
        raise
    finally:
        if tmp_dir is not None:
            shutil.rmtree(tmp_dir, ignore_errors=True)


class StagedOutputs:
    """The outputs of one :func:`staged_outputs` block: each is written under a temporary name first.

    :meth:`path` gives the file a writer should write for a final output: its own name inside a
    hidden temporary folder beside it (so detached headers and companion files, e.g. ``.mhd`` +
    ``.raw`` or ``.hv`` + ``.v``, keep their names, and a DICOM series folder its own).
    """

    def __init__(self) -> None:
        self._stages: list[tuple[Path, Path]] = []

    def path(self, dest: str | os.PathLike) -> Path:
        """Where to write ``dest`` (file or DICOM folder) now; it reaches ``dest`` when the block succeeds."""
        dest = Path(dest)
        parent = dest.parent if str(dest.parent) else Path(".")
        if not parent.is_dir():
            raise VoxdiffError(f"{dest}: output folder {parent} does not exist")
        if not os.access(parent, os.W_OK):
            raise VoxdiffError(f"{dest}: output folder {parent} is not writable")
        try:
            tmp_dir = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=parent))
        except OSError as exc:
            raise write_error(dest, exc) from exc
        self._stages.append((dest, tmp_dir))
        return tmp_dir / dest.name

    @property
    def outputs(self) -> list[Path]:
        """The final paths staged so far, in order."""
        return [dest for dest, _ in self._stages]

    def _commit(self) -> None:
        # Renames within one folder: each output appears whole, its main file after its companions.
        mode = _output_mode()
        for dest, tmp_dir in self._stages:
            for f in sorted(tmp_dir.iterdir(), key=lambda f: f.name == dest.name):
                target = dest.parent / f.name
                if f.is_dir():  # a DICOM series folder: the earlier one goes only once the new one is in place
                    os.chmod(f, 0o777 & ~_umask())
                    old = None
                    if target.is_dir():
                        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=dest.parent))
                        os.replace(target, old / target.name)
                    os.replace(f, target)
                    if old is not None:
                        shutil.rmtree(old, ignore_errors=True)
                else:
                    os.chmod(f, mode)
                    os.replace(f, target)
        self._discard()

    def _discard(self) -> None:
        for _, tmp_dir in self._stages:
            shutil.rmtree(tmp_dir, ignore_errors=True)


@contextlib.contextmanager
def staged_outputs(out_dir: str | os.PathLike | None = None) -> Iterator[StagedOutputs]:
    """Run a block that writes several outputs as one transaction: all of them, or none changed.

    Write each output to ``stage.path(final)``; when the block ends without error, every staged
    file is renamed onto its final name. If the block raises (a bad case, a full disk, Ctrl-C),
    the staged files are removed and every file that existed before is left byte-identical: an
    earlier result that a re-run was replacing survives the failure. With ``out_dir`` the folder
    is first created (as :func:`ensure_out_dir`); the folders this call created are removed again
    on failure if they are empty.
    """
    created: list[Path] = []
    if out_dir is not None:
        out_dir = Path(out_dir)
        p = out_dir
        while not p.exists() and p != p.parent:
            created.append(p)
            p = p.parent
        ensure_out_dir(out_dir)
    stage = StagedOutputs()
    try:
        yield stage
        try:
            stage._commit()
        except OSError as exc:
            raise write_error(stage.outputs[0] if stage.outputs else (out_dir or "."), exc) from exc
    except BaseException as exc:
        stage._discard()
        for d in created:  # deepest first
            with contextlib.suppress(OSError):
                d.rmdir()
        if isinstance(exc, VoxdiffError):  # name the output, not its temporary name
            text = str(exc)
            for dest, tmp_dir in stage._stages:
                text = text.replace(str(tmp_dir / dest.name), str(dest))
            if text != str(exc):
                raise VoxdiffError(text) from exc
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)
