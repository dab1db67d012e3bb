"""Integer-factor downsampling of volumes with their geometry (for cheap trial runs on CPU)."""

from __future__ import annotations

import numpy as np

from voxdiff.io import Volume


def downsample_geometry(shape: tuple[int, ...], affine: np.ndarray, factor: int) -> tuple[tuple[int, ...], np.ndarray]:
    """Shape and affine of a volume after :func:`downsample_volume` by ``factor``."""
    new_shape = tuple(s // factor for s in shape[:3])
    aff = np.array(affine, dtype=np.float64)
    # The new voxel (0,0,0) is the centre of the old block [0, factor)^3.
    centre = aff @ np.array([(factor - 1) / 2.0] * 3 + [1.0])
    aff[:3, :3] = aff[:3, :3] * factor
    aff[:3, 3] = centre[:3]
    return new_shape, aff


def downsample_volume(volume: Volume, factor: int, *, label: bool = False) -> Volume:
    """Block-average an image (or take each block's first voxel for labels) by an integer factor.

    Trailing voxels that do not fill a block are dropped; the affine keeps world positions
    consistent (each new voxel sits at the centre of its block).
    """
    if factor == 1:
        return volume
    shape, aff = downsample_geometry(volume.shape, volume.affine, factor)
    a = volume.array[: shape[0] * factor, : shape[1] * factor, : shape[2] * factor]
    if label:
        out = a[::factor, ::factor, ::factor]
    else:
        out = a.reshape(shape[0], factor, shape[1], factor, shape[2], factor).mean(axis=(1, 3, 5))
    return Volume(array=np.ascontiguousarray(out, dtype=np.float32), affine=aff, path=volume.path,
                  header=None, disk_dtype=volume.disk_dtype)
