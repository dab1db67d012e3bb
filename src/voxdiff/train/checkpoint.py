"""Checkpoints: atomic writes, safe loading (``weights_only=True``), and identity checks."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch

from voxdiff.errors import VoxdiffError
from voxdiff.io import atomic_path

FORMAT = "voxdiff-checkpoint"
VERSION = 1


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write ``payload`` (plus format tag and version) atomically with ``torch.save``."""
    payload = {"format": FORMAT, "version": VERSION, **payload}
    buf = io.BytesIO()
    torch.save(payload, buf)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buf.getvalue())
    return Path(path)


def load_checkpoint(path: str | Path, *, task: str | None = None, map_location: str | torch.device = "cpu") -> dict:
    """Load a voxdiff checkpoint safely; refuse other files and checkpoints of another task."""
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
        raise VoxdiffError(f"{path}: not a loadable voxdiff checkpoint ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})") from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise VoxdiffError(f"{path}: not a voxdiff checkpoint (no '{FORMAT}' tag)")
    if ckpt.get("version", 0) > VERSION:
        raise VoxdiffError(f"{path}: checkpoint version {ckpt.get('version')} is newer than this voxdiff supports")
    if task is not None and ckpt.get("task") != task:
        raise VoxdiffError(f"{path}: checkpoint is for task '{ckpt.get('task')}', this command needs '{task}'")
    ckpt["path"] = str(path)
    return ckpt
