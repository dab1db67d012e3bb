"""The demos' pictures: volumes shown in radiological view, slices through the brain."""

from __future__ import annotations

import numpy as np

#: Label colours of the tissue classes (background, CSF, GM, WM) in the segmentation montage.
TISSUE_COLOURS = ("#000000", "#3b75c4", "#e07b39", "#f4f1e1")


def display(vol: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """The array reoriented to RAS, then left-right flipped: radiological view (patient right on the left)."""
    import nibabel as nib

    ornt = nib.orientations.io_orientation(affine)
    ras = nib.orientations.apply_orientation(vol, ornt)
    return np.ascontiguousarray(ras[::-1])


def brain_slices(mask: np.ndarray) -> tuple[int, int, int]:
    """Slice indices through a displayed brain mask: its centre, the sagittal one through a hemisphere.

    The sagittal slice avoids the interhemispheric fissure (shows striatum and insula).
    """
    hit = np.argwhere(mask)
    centre = ((hit.min(axis=0) + hit.max(axis=0)) // 2).tolist()
    width = hit[:, 0].max() - hit[:, 0].min()
    centre[0] = int(np.clip(centre[0] - round(0.15 * width), 0, mask.shape[0] - 1))
    return int(centre[0]), int(centre[1]), int(centre[2])


def tissue_colormap():
    """A discrete matplotlib colour map for labels 0..3 (use with the range (-0.5, 3.5))."""
    from matplotlib.colors import ListedColormap

    return ListedColormap(list(TISSUE_COLOURS), name="tissue")
