"""Checkpoints: atomic, fsync'ed writes, safe loading (``weights_only=True``), identity and config checks.

A checkpoint's stored config is validated against :mod:`voxdiff.config.schema` on load, so a
hand-edited or foreign config is one clear sentence rather than a TypeError in a constructor.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

import voxdiff.tasks  # noqa: F401  (registers every task's model schema before any validation)
from voxdiff.config import validate_config
from voxdiff.errors import VoxdiffError
from voxdiff.io import atomic_path

FORMAT = "voxdiff-checkpoint"
VERSION = 1


class UnreadableCheckpoint(VoxdiffError):
    """A file that is no complete voxdiff checkpoint (truncated, corrupt or foreign)."""


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write ``payload`` (plus format tag and version) atomically with ``torch.save``.

    The data and then the folder entry are fsync'ed, so after a crash or power loss the path
    holds either the previous checkpoint or this one, complete.
    """
    payload = {"format": FORMAT, "version": VERSION, **payload}
    buf = io.BytesIO()
    torch.save(payload, buf)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(buf.getbuffer())
            f.flush()
            os.fsync(f.fileno())
    fsync_dir(Path(path).parent)
    return Path(path)


def fsync_dir(folder: str | Path) -> None:
    """Flush a folder's entries (a rename into it) to disk; a no-op where folders cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on folders
        pass
    finally:
        os.close(fd)


def load_checkpoint(path: str | Path, *, task: str | tuple[str, ...] | None = None, map_location: str | torch.device = "cpu",
                    validate: bool = True) -> dict:
    """Load a voxdiff checkpoint safely; refuse other files, checkpoints of another task and invalid configs."""
    path = Path(path)
    if not path.exists():
        raise VoxdiffError(f"{path}: checkpoint not found")
    if path.is_dir():
        last = path / "last.pt"
        if not last.exists():
            raise VoxdiffError(f"{path}: folder has no last.pt checkpoint")
        path = last
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises many types for foreign/corrupt files
        first = (str(exc).splitlines() or [""])[0][:200]
        raise UnreadableCheckpoint(f"{path}: not a loadable voxdiff checkpoint ({type(exc).__name__}: {first})") from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise UnreadableCheckpoint(f"{path}: not a voxdiff checkpoint (no '{FORMAT}' tag)")
    if ckpt.get("version", 0) > VERSION:
        raise VoxdiffError(f"{path}: checkpoint version {ckpt.get('version')} is newer than this voxdiff supports")
    allowed = (task,) if isinstance(task, str) else tuple(task or ())
    if allowed and ckpt.get("task") not in allowed:
        raise VoxdiffError(f"{path}: checkpoint is for task '{ckpt.get('task')}', this command needs "
                           + " or ".join(f"'{t}'" for t in allowed))
    if validate and "config" in ckpt:
        cfg = ckpt["config"]
        if isinstance(cfg, dict) and "task" not in cfg and isinstance(ckpt.get("task"), str):
            cfg = {"task": ckpt["task"], **cfg}
        ckpt["config"] = validate_config(cfg, where=f"{path}: stored config")
    ckpt["path"] = str(path)
    return ckpt


# --------------------------------------------------------------------------- run folders and resume
#: Names a training run writes into its folder: nothing else is ever pruned, moved or truncated.
_RUN_NAMES = r"(last\.pt|step_\d+\.pt|config\.yaml|train_log\.csv|val_log\.csv|curves\.png|val_step\d+\.png)"
_RUN_FILE = re.compile(rf"^{_RUN_NAMES}$")
_RUN_DIRS = ("tb",)  # TensorBoard events (voxdiff.train.tensorboard)
_STEP_FILE = re.compile(r"^step_(\d+)\.pt$")
#: Temporary names of :func:`voxdiff.io.atomic.atomic_path` (``.NAME.XXXXXXXX.tmp<suffix>``) for those names.
_STALE_TEMP = re.compile(rf"^\.{_RUN_NAMES}\.[A-Za-z0-9_]+\.tmp")
#: Files whose presence means a folder holds an earlier run.
RUN_MARKERS = ("last.pt", "step_*.pt", "train_log.csv")


def step_checkpoints(out_dir: str | Path) -> list[tuple[int, Path]]:
    """``(step, path)`` of the ``step_*.pt`` files in ``out_dir``, newest first."""
    out_dir = Path(out_dir)
    found = [(int(m.group(1)), p) for p in out_dir.glob("step_*.pt") if (m := _STEP_FILE.match(p.name))]
    return sorted(found, reverse=True)


def earlier_run(out_dir: str | Path) -> list[str]:
    """Names of the files in ``out_dir`` that show an earlier training run (empty when none)."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        return []
    names = [n for n in ("last.pt", "train_log.csv") if (out_dir / n).exists()]
    steps = step_checkpoints(out_dir)
    return names + ([f"{len(steps)} step_*.pt"] if steps else [])


def remove_stale_temp(out_dir: str | Path) -> list[Path]:
    """Remove temporary files (and folders) that killed runs left in ``out_dir``; returns them."""
    out_dir = Path(out_dir)
    removed = []
    for p in out_dir.iterdir() if out_dir.is_dir() else []:
        if _STALE_TEMP.match(p.name):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def move_run_aside(out_dir: str | Path) -> Path:
    """Move the run's own files (checkpoints, logs, config, PNGs, ``tb/``) into ``out_dir/previous-<time>/``."""
    out_dir = Path(out_dir)
    dest = out_dir / time.strftime("previous-%Y%m%d-%H%M%S")
    n = 1
    while dest.exists():
        dest = out_dir / f"{dest.name.split('.')[0]}.{n}"
        n += 1
    dest.mkdir()
    for p in sorted(out_dir.iterdir()):
        if (p.is_file() and _RUN_FILE.match(p.name)) or (p.is_dir() and p.name in _RUN_DIRS):
            os.replace(p, dest / p.name)
    fsync_dir(out_dir)
    return dest


def find_resume_checkpoint(out_dir: str | Path, *, task: str | None = None, map_location: Any = "cpu",
                           warn: Callable[[str], None] = print) -> dict | None:
    """The newest complete checkpoint of ``out_dir``: ``last.pt``, or a newer / the newest loadable ``step_*.pt``.

    Every candidate is verified by loading it; a truncated or corrupt one (a run killed while
    writing it, a disk that filled) is skipped with a warning line. None when the folder holds
    no checkpoint; an error when it holds some but none is complete.
    """
    out_dir = Path(out_dir)
    bad: list[str] = []
    best: dict | None = None

    def attempt(path: Path) -> dict | None:
        try:
            return load_checkpoint(path, task=task, map_location=map_location)
        except UnreadableCheckpoint as exc:
            warn(f"warning: skipping {path.name}: incomplete or corrupt ({str(exc).split(': ', 1)[-1]})")
            bad.append(path.name)
            return None

    if (out_dir / "last.pt").is_file():
        best = attempt(out_dir / "last.pt")
    for step, path in step_checkpoints(out_dir):
        if best is not None and step <= int(best.get("step", 0)):
            break
        ckpt = attempt(path)
        if ckpt is not None:
            best = ckpt
            break
    if best is None and bad:
        raise VoxdiffError(f"{out_dir}: no complete checkpoint to resume from ({', '.join(bad)} are incomplete "
                           "or corrupt); remove them to start afresh")
    return best


def truncate_log(path: str | Path, step: int) -> int:
    """Cut a CSV log back to the rows of steps ``<= step`` (one header; a torn last line dropped).

    A resumed run then appends exactly the rows it computes, with no step logged twice. Returns
    the number of lines removed; the file is rewritten atomically, and only if something changed.
    """
    from voxdiff.io import atomic_write_text

    path = Path(path)
    if not path.is_file():
        return 0
    text = path.read_text(errors="replace")
    lines = text.split("\n")
    torn = lines.pop() if lines else ""   # "" when the file ends with a newline, else a partial line
    if not lines:                         # not even a complete header: nothing worth keeping
        path.unlink()
        return 1 if torn else 0
    header, rows = lines[0], lines[1:]
    names = header.split(",")
    col = names.index("step") if "step" in names else None
    keep = [header]
    for row in rows:
        fields = row.split(",")
        if len(fields) != len(names):
            continue
        if col is not None:
            try:
                if float(fields[col]) > step:
                    continue
            except ValueError:
                continue
        keep.append(row)
    removed = len(rows) - (len(keep) - 1) + (1 if torn else 0)
    if removed:
        atomic_write_text(path, "\n".join(keep) + "\n")
    return removed


class TrainingInterrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM during training, raised between checkpoint writes (never inside one)."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        self.signame = signal.Signals(signum).name
        super().__init__(self.signame)


class InterruptGuard:
    """Turn SIGINT and SIGTERM into :class:`TrainingInterrupted`, deferred while a write is under way.

    ``with guard: ...`` installs the handlers (main thread only) and restores the previous ones;
    ``with guard.writing(): ...`` marks a write that a signal must not cut: the exception is
    raised once the write is complete.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.pending: int | None = None
        self._depth = 0
        self._previous: dict[int, Any] = {}

    def _handler(self, signum, frame) -> None:
        if self._depth:
            self.pending = signum
            return
        raise TrainingInterrupted(signum)

    def __enter__(self) -> "InterruptGuard":
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.getsignal(sig)
                signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc) -> bool:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
        return False

    @contextlib.contextmanager
    def writing(self) -> Iterator[None]:
        """A block during which signals wait (a checkpoint being written)."""
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1
        if not self._depth and self.pending is not None:
            signum, self.pending = self.pending, None
            raise TrainingInterrupted(signum)
