"""The two runtime options every command shares: ``--device`` and ``--seed``, checked in one place.

Both are checked before any work starts, so a typo or a machine without the asked-for GPU is
one sentence instead of a traceback from deep inside torch.
"""

from __future__ import annotations

import os
import re
from typing import Any

from voxdiff.errors import VoxdiffError

#: Seeds lie in ``0 .. SEED_LIMIT - 1``. The trainer derives per-sample seeds as
#: ``seed * 1_000_003 + position`` for ``torch.Generator.manual_seed`` (which takes at most 64
#: bits) and seeds numpy's legacy generator (32 bits), so 32 bits is what every path accepts.
SEED_LIMIT = 2**32

_DEVICE = re.compile(r"^(auto|cpu|mps|cuda)(:(\d+))?$")


def check_seed(value: Any, name: str = "--seed") -> int:
    """``value`` as an int in ``0 .. 2**32 - 1``, or one clear error naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int):
        try:
            import numpy as np

            if isinstance(value, np.integer):
                value = int(value)
        except ImportError:  # pragma: no cover
            pass
    if isinstance(value, bool) or not isinstance(value, int):
        raise VoxdiffError(f"{name} must be an integer in 0..{SEED_LIMIT - 1}, got {value!r}")
    if not 0 <= value < SEED_LIMIT:
        raise VoxdiffError(f"{name} must be an integer in 0..{SEED_LIMIT - 1}, got {value}")
    return value


def check_device_syntax(value: Any, name: str = "--device") -> str:
    """``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps`` (whether it exists is :func:`check_device`'s job)."""
    m = _DEVICE.match(value.strip().lower()) if isinstance(value, str) else None
    if m is None or (m.group(2) and m.group(1) != "cuda"):
        raise VoxdiffError(f"{name} must be auto, cpu, cuda or cuda:N (N = GPU index), got {value!r}")
    return value.strip().lower()


def check_device(value: Any, name: str = "--device") -> str:
    """The device string if this machine has it: refuse junk, CUDA without CUDA, a missing GPU index.

    ``cuda`` without an index under torchrun means this process's ``LOCAL_RANK`` GPU, which must
    exist too. Returns the (lower-cased) string unchanged otherwise; ``auto`` is always fine.
    """
    value = check_device_syntax(value, name)
    m = _DEVICE.match(value)
    kind, index = m.group(1), m.group(3)
    if kind in ("auto", "cpu"):
        return value
    import torch

    if kind == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise VoxdiffError(f"{name} {value}: this PyTorch has no MPS (Apple GPU) device; use cpu")
        return value
    if not torch.cuda.is_available():
        hint = f"use {name} cpu" if name.startswith("-") else f"set {name} to cpu"
        raise VoxdiffError(f"{name} {value}: this PyTorch sees no CUDA GPU (torch.cuda.is_available() is False); "
                           f"{hint}")
    count = torch.cuda.device_count()
    idx = int(index) if index is not None else int(os.environ.get("LOCAL_RANK", "0"))
    if idx >= count:
        what = f"{value}" if index is not None else f"{value} (LOCAL_RANK {idx})"
        raise VoxdiffError(f"{name} {what}: only {count} CUDA device(s) are visible "
                           f"(cuda:0..cuda:{count - 1})")
    return value
