"""What a pipeline accepts as a volume: a path, a :class:`~voxdiff.io.Volume`, an array with its
affine, or a MONAI ``MetaTensor`` (TorchIO-style: an image always travels with its geometry)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from voxdiff.errors import VoxdiffError
from voxdiff.io import Volume, load_volume

#: Everything :func:`as_volume` understands.
VolumeLike = Any


def _array_3d(array: Any, what: str) -> np.ndarray:
    arr = np.asarray(array, dtype=np.float32)
    # A MONAI/TorchIO channel-first single-channel image (1, X, Y, Z) is a 3D volume.
    if arr.ndim == 4 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim == 5 and arr.shape[:2] == (1, 1):
        arr = arr[0, 0]
    if arr.ndim != 3:
        raise VoxdiffError(f"{what}: expected a 3D volume (or one channel of one), got shape {tuple(arr.shape)}")
    if not np.isfinite(arr).all():
        raise VoxdiffError(f"{what}: contains {int((~np.isfinite(arr)).sum())} NaN/Inf voxel(s)")
    return arr


def _affine(affine: Any, what: str) -> np.ndarray:
    aff = np.asarray(affine, dtype=np.float64)
    if aff.shape != (4, 4) or not np.isfinite(aff).all():
        raise VoxdiffError(f"{what}: the affine must be a finite 4x4 matrix, got shape {aff.shape}")
    if abs(np.linalg.det(aff[:3, :3])) < 1e-12:
        raise VoxdiffError(f"{what}: the affine is singular (zero voxel size or collinear axes)")
    return aff


def as_volume(item: VolumeLike, *, affine: Any = None, role: str = "input", **read: Any) -> Volume:
    """Turn any accepted input into a :class:`Volume` (float32 array + RAS affine).

    * a path (str or ``Path``; a volume file or a DICOM series folder): read with
      :func:`voxdiff.io.load_volume`, which takes ``read`` (e.g. ``units="suv"``, ``series_uid=``);
    * a :class:`Volume`: returned as is;
    * a MONAI ``MetaTensor`` (``(X, Y, Z)`` or ``(1, X, Y, Z)``): its ``affine`` (RAS, as MONAI's
      loaders give it) unless ``affine`` is passed;
    * ``(array, affine)`` or an array / torch tensor with ``affine=``; without an affine the
      identity (1 mm voxels at the origin) is used.
    """
    if isinstance(item, Volume):
        return item
    if isinstance(item, (str, Path)):
        return load_volume(item, role=role, **{k: v for k, v in read.items() if v is not None})
    if isinstance(item, tuple) and len(item) == 2 and affine is None:
        item, affine = item
    meta_affine = getattr(item, "affine", None)
    if affine is None and meta_affine is not None:
        affine = meta_affine
    if hasattr(item, "detach"):  # torch tensors, MetaTensors included
        item = item.detach().cpu().numpy()
    if hasattr(affine, "detach"):
        affine = affine.detach().cpu().numpy()
    arr = _array_3d(item, role)
    aff = np.eye(4) if affine is None else _affine(affine, role)
    return Volume(array=arr, affine=aff)
