"""Atomic file writes: a reader never sees a half-written output."""

from __future__ import annotations

import contextlib
import os
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


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only on success.

    The temporary name keeps the full suffix so that format-sniffing writers (nibabel,
    SimpleITK) pick the right format. On any exception the temporary file is removed and
    ``path`` is left untouched.
    """
    path = check_writable_dir(path)
    suffix = full_suffix(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + suffix, dir=path.parent or ".")
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp creates 0600 files; outputs get the usual permissions (0666 minus umask).
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)
        os.replace(tmp_path, path)
    except OSError as exc:
        tmp_path.unlink(missing_ok=True)
        if exc.errno == 28:  # ENOSPC
            raise VoxdiffError(f"{path}: no space left on device; nothing was written") from exc
        raise VoxdiffError(f"{path}: could not write ({exc.strerror or exc}); nothing was written") from exc
    except BaseException:
        tmp_path.unlink(missing_ok=True)
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
