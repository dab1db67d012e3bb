"""Where voxdiff finds the shared real-data folder."""

from __future__ import annotations

import os
from pathlib import Path


def shared_data_dir() -> Path:
    """The real-data folder: ``$VOXDIFF_DATA`` if set, else ``../shared/data`` beside the project root.

    The returned path may not exist (a user's machine without the shared data); callers check.
    """
    env = os.environ.get("VOXDIFF_DATA")
    if env:
        return Path(env).expanduser()
    project_root = Path(__file__).resolve().parents[2]
    return project_root.parent / "shared" / "data"
