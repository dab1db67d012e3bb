"""Resource sanity checks made before a volume is allocated: voxel counts, data sizes, labels, affines.

A header is read first and what it promises is checked against the limit and against the
file, so a NIfTI header claiming 30000^3 voxels in a 2 kB file is one clear sentence instead
of a MemoryError (or a 100 GB allocation).
"""

from __future__ import annotations

import math
import os
from typing import Sequence

import numpy as np

from voxdiff.errors import VoxdiffError

#: Default voxel limit per volume: four 512^3 volumes' worth (2 GiB as float32).
DEFAULT_MAX_VOXELS = 4 * 512**3
#: Labels above this (or non-finite) are no label map: class ids and parcellation ids are far smaller.
MAX_LABEL = 65535


def max_voxels() -> int:
    """The voxel limit: ``VOXDIFF_MAX_VOXELS`` from the environment, else :data:`DEFAULT_MAX_VOXELS`."""
    raw = os.environ.get("VOXDIFF_MAX_VOXELS")
    if raw is None or not raw.strip():
        return DEFAULT_MAX_VOXELS
    try:
        value = int(float(raw))
    except ValueError:
        raise VoxdiffError(f"VOXDIFF_MAX_VOXELS must be a positive integer, got {raw!r}") from None
    if value < 1:
        raise VoxdiffError(f"VOXDIFF_MAX_VOXELS must be a positive integer, got {raw!r}")
    return value


def check_voxel_count(shape: Sequence[int], what: str) -> int:
    """The number of voxels of ``shape``, or a clear error when it is negative or above :func:`max_voxels`."""
    dims = [int(d) for d in shape]
    if any(d < 0 for d in dims):
        raise VoxdiffError(f"{what}: header gives a negative size {tuple(dims)}")
    count = math.prod(dims)
    limit = max_voxels()
    if count > limit:
        raise VoxdiffError(f"{what}: header claims {'x'.join(map(str, dims))} = {count:,} voxels, above the limit "
                           f"of {limit:,} (set VOXDIFF_MAX_VOXELS to allow larger volumes)")
    return count


def check_data_size(what: str, needed: int, available: int) -> None:
    """Refuse a file holding fewer bytes of voxel data than its header promises."""
    if available < needed:
        raise VoxdiffError(f"{what}: its header needs {needed:,} bytes (data offset + voxels) but the file holds "
                           f"only {max(available, 0):,} (truncated, or a corrupt header)")


def check_label_range(array: np.ndarray, what: str) -> None:
    """Refuse label maps with non-finite values or values beyond +-:data:`MAX_LABEL`."""
    arr = np.asarray(array)
    if arr.size == 0 or (np.issubdtype(arr.dtype, np.integer) and arr.dtype.itemsize <= 2):
        return
    finite = np.isfinite(arr)
    if not finite.all():
        raise VoxdiffError(f"{what}: a label map must hold finite values, found {int((~finite).sum())} NaN/Inf voxel(s)")
    big = np.abs(arr) > MAX_LABEL
    if big.any():
        example = float(arr[big].flat[0])
        raise VoxdiffError(f"{what}: label value {example:g} is out of range (labels must lie within "
                           f"+-{MAX_LABEL}; is it an image rather than a label map?)")


def affine_problem(affine: np.ndarray) -> str | None:
    """``"non-finite"`` or ``"singular"`` when a voxel-to-world affine cannot be used, else None."""
    a = np.asarray(affine, dtype=np.float64)
    if a.shape != (4, 4) or not np.isfinite(a).all():
        return "non-finite"
    lin = a[:3, :3]
    scale = float(np.abs(lin).max())
    if scale == 0 or abs(float(np.linalg.det(lin / scale))) < 1e-12:
        return "singular"
    return None


def check_affine(affine: np.ndarray, what: str) -> None:
    """Refuse a singular or non-finite voxel-to-world affine (no geometry to compute with)."""
    problem = affine_problem(affine)
    if problem is not None:
        detail = "has NaN/Inf entries" if problem == "non-finite" else "is singular (a zero or degenerate voxel axis)"
        raise VoxdiffError(f"{what}: the voxel-to-world affine {detail}; fix the header's sform/qform "
                           "(or spacing and direction)")
