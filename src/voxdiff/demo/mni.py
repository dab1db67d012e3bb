"""The MNI152 2009 template inside nilearn, read offline and brought onto the demos' grids.

nilearn's wheel holds the skull-stripped T1, the brain mask and the grey-/white-matter
probability maps (``resolution=2``: 99 x 117 x 95 voxels at 2 mm, RAS), so nothing is
downloaded. :func:`mni152_volumes` reads them on one grid; :func:`mni_on_ixi_grid` reorients
them to the IXI training data's axis order (PSR), pads/crops them to its 120 x 120 x 90 grid
with the brain where IXI brains lie, maps the T1 intensities onto IXI's brain-intensity
distribution, wraps the brain in IXI's average head profile (the models were trained on heads
with skulls), and derives a 4-class tissue reference (background, CSF, GM, WM).
"""

from __future__ import annotations

import functools
from typing import NamedTuple, Sequence

import numpy as np

from voxdiff.errors import VoxdiffError
from voxdiff.io import Volume

__all__ = ["IXI_SHAPE", "IXI_ORIENTATION", "IXI_SPACING_MM", "IXI_BRAIN_CENTRE", "IXI_BRAIN_QUANTILES",
           "IXI_HEAD_PROFILE", "IXI_AIR_LEVEL", "TISSUE_CLASSES", "MniOnIxiGrid", "mni152_volumes",
           "reorient_volume", "window_volume", "mni_on_ixi_grid"]

#: The IXI T1 grid of ``/shared/data/ixi-t1-2mm`` (every one of the 160 cases).
IXI_SHAPE = (120, 120, 90)
IXI_ORIENTATION = "PSR"
IXI_SPACING_MM = 2.0
#: Mean over the 160 IXI cases of the centre of the brain's bounding box (DLMUSE labels > 0), in
#: voxels of the 120 x 120 x 90 grid (case-to-case sd 2.2, 3.9, 0.6 voxels).
IXI_BRAIN_CENTRE = (65.8, 67.3, 44.2)
#: Percentile -> IXI T1 value inside the brain (DLMUSE labels > 0): the median over the 160 cases
#: of each case's percentile. The template's brain intensities are mapped onto these quantiles.
IXI_BRAIN_QUANTILES: dict[float, float] = {
    0.5: 50.0, 1: 82.5, 2: 113.5, 5: 159.7, 10: 215.3, 25: 329.8, 50: 430.4, 75: 520.6, 90: 584.3, 95: 617.7,
    98: 648.9, 99: 664.6, 99.5: 677.9, 99.9: 706.7}
#: IXI's head outside the brain, in 2 mm shells: the median T1 intensity of the voxels 0-2, 2-4, ...
#: mm outside the brain (DLMUSE labels > 0), in units of the case's median brain intensity, median
#: over 40 IXI cases (every 4th): CSF, bone (dark), marrow and scalp fat (bright), skin. Beyond it,
#: air at :data:`IXI_AIR_LEVEL`. The models saw skulls in training: on skull-stripped IXI cases the
#: shipped pre-segmentation's mean Dice falls from 0.87 to ~0.4, this shell brings it back to ~0.6.
IXI_HEAD_PROFILE = (0.176, 0.162, 0.362, 0.652, 0.639, 0.555, 0.357, 0.057, 0.027, 0.015, 0.014, 0.014, 0.013)
IXI_AIR_LEVEL = 0.013
#: The tissue classes of ``voxdiff make-labels --preset tissue`` (the segmentation models' classes).
TISSUE_CLASSES = ("background", "CSF", "GM", "WM")

_NILEARN = {"t1": "template", "brain": "brain_mask", "gm": "gm_template", "wm": "wm_template"}


def mni152_volumes(*names: str) -> dict[str, Volume]:
    """nilearn's 2 mm MNI152 maps by short name (``t1``, ``brain``, ``gm``, ``wm``), checked to share one grid."""
    unknown = [n for n in names if n not in _NILEARN]
    if unknown:
        raise ValueError(f"unknown MNI152 map(s) {unknown} (known: {', '.join(_NILEARN)})")
    maps = {n: _read_mni152(n) for n in names}
    first = maps[names[0]]
    for name, (array, affine) in maps.items():
        if array.shape != first[0].shape or not np.allclose(affine, first[1], atol=1e-4):
            raise VoxdiffError(f"nilearn's MNI152 {_NILEARN[name]} does not share the {_NILEARN[names[0]]}'s grid")
    return {n: Volume(array=array.copy(), affine=affine.copy()) for n, (array, affine) in maps.items()}


@functools.lru_cache(maxsize=None)
def _read_mni152(name: str) -> tuple[np.ndarray, np.ndarray]:
    # nilearn resamples its 1 mm files on every call (~1 s each): read each map once per process.
    from nilearn import datasets

    try:
        img = getattr(datasets, f"load_mni152_{_NILEARN[name]}")(resolution=2)
    except Exception as exc:  # a nilearn without the bundled templates
        raise VoxdiffError(f"the MNI152 templates could not be read from the installed nilearn ({exc})") from exc
    return np.asarray(img.dataobj, dtype=np.float32), np.asarray(img.affine, dtype=np.float64)


def reorient_volume(vol: Volume, axcodes: str) -> Volume:
    """The volume with its axes permuted/flipped to ``axcodes`` (e.g. ``PSR``); world positions kept."""
    import nibabel as nib

    ornt = nib.orientations.ornt_transform(nib.orientations.io_orientation(vol.affine),
                                           nib.orientations.axcodes2ornt(tuple(axcodes)))
    array = nib.orientations.apply_orientation(vol.array, ornt)
    affine = vol.affine @ nib.orientations.inv_ornt_aff(ornt, vol.array.shape[:3])
    return Volume(array=np.ascontiguousarray(array), affine=affine)


def window_volume(vol: Volume, start: Sequence[int], shape: Sequence[int], fill: float = 0.0) -> Volume:
    """Voxels ``start .. start + shape`` of ``vol`` (``fill`` where that lies outside it), same world positions.

    A crop where the window is inside the volume, zero padding where it is not; the affine's
    origin moves to voxel ``start``, so every voxel keeps its world position.
    """
    start = np.asarray(start, dtype=int)
    shape = tuple(int(s) for s in shape)
    src = vol.array
    out = np.full(shape + src.shape[3:], fill, dtype=src.dtype)
    lo = np.maximum(start, 0)
    hi = np.minimum(start + np.asarray(shape), src.shape[:3])
    if np.all(hi > lo):
        dst = tuple(slice(int(a - s), int(b - s)) for a, b, s in zip(lo, hi, start))
        out[dst] = src[tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))]
    affine = vol.affine.copy()
    affine[:3, 3] = vol.affine[:3, :3] @ start.astype(np.float64) + vol.affine[:3, 3]
    return Volume(array=out, affine=affine)


def _brain_centre(mask: np.ndarray) -> np.ndarray:
    hit = np.argwhere(mask)
    return (hit.min(axis=0) + hit.max(axis=0)) / 2.0


def _ixi_intensities(t1: np.ndarray, brain: np.ndarray, head: bool) -> np.ndarray:
    """Brain voxels mapped quantile to quantile onto :data:`IXI_BRAIN_QUANTILES`; outside the brain
    :data:`IXI_HEAD_PROFILE` then :data:`IXI_AIR_LEVEL` (``head``) or 0."""
    pcts = np.array(list(IXI_BRAIN_QUANTILES), dtype=np.float64)
    ixi = np.array(list(IXI_BRAIN_QUANTILES.values()), dtype=np.float64)
    values = t1[brain]
    mine = np.percentile(values, pcts)
    # 0 stays 0 and the template's maximum lands at IXI's 99.9th percentile: a monotone map.
    src = np.concatenate([[0.0], mine, [max(float(values.max()), mine[-1] + 1e-6)]])
    dst = np.concatenate([[0.0], ixi, [ixi[-1] + 1e-3]])
    out = np.zeros_like(t1, dtype=np.float32)
    out[brain] = np.interp(values, src, dst)
    if head:
        from scipy import ndimage

        shell = np.ceil(ndimage.distance_transform_edt(~brain)).astype(int)  # 2 mm shells: 1, 2, ...
        level = np.array([0.0, *IXI_HEAD_PROFILE, IXI_AIR_LEVEL], dtype=np.float32) * IXI_BRAIN_QUANTILES[50]
        out[~brain] = level[np.minimum(shell[~brain], len(IXI_HEAD_PROFILE) + 1)]
    return out


class MniOnIxiGrid(NamedTuple):
    """The MNI152 template on an IXI-like grid: T1 (IXI intensities), brain mask and 4-class reference."""

    t1: Volume
    brain: np.ndarray
    reference: Volume
    #: (X, Y, Z, 4) probabilities of background, CSF, GM, WM whose argmax is ``reference``.
    tissue: np.ndarray


def mni_on_ixi_grid(shape: Sequence[int] = IXI_SHAPE, *, orientation: str = IXI_ORIENTATION,
                    downsample: int = 1, head: bool = True) -> MniOnIxiGrid:
    """The MNI152 T1 and a tissue reference on the IXI training grid (see the module docstring).

    Steps: reorient to ``orientation`` (nibabel), take a ``shape x downsample`` window at 2 mm
    that puts the brain's bounding-box centre where IXI brains lie on average
    (:data:`IXI_BRAIN_CENTRE`, scaled to the window), map brain intensities onto
    :data:`IXI_BRAIN_QUANTILES`; the template is skull-stripped, so outside the brain mask an
    average IXI head (:data:`IXI_HEAD_PROFILE` by distance, then air; ``head=False``: zeros),
    then block-average by ``downsample`` as ``data.downsample`` does in training (the reference
    averages the tissue probabilities the same way). Every affine keeps world (MNI) positions.

    The reference: inside nilearn's brain mask, CSF = max(1 - GM - WM, 0) with nilearn's GM/WM
    probability maps; background = 1 outside the mask; labels = argmax over
    (background, CSF, GM, WM).
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 1:
        raise VoxdiffError(f"the template grid must have 3 positive sizes, got {shape}")
    if downsample < 1:
        raise VoxdiffError(f"the template's downsampling factor must be >= 1, got {downsample}")
    maps = {k: reorient_volume(v, orientation) for k, v in mni152_volumes("t1", "brain", "gm", "wm").items()}
    brain = maps["brain"].array > 0
    fine = tuple(s * downsample for s in shape)
    place = np.asarray(IXI_BRAIN_CENTRE) * np.asarray(fine) / np.asarray(IXI_SHAPE)
    start = np.rint(_brain_centre(brain) - place).astype(int)
    win = {k: window_volume(v, start, fine) for k, v in maps.items()}
    brain = win["brain"].array > 0
    if not brain.any():
        raise VoxdiffError(f"a {fine} window holds no brain voxel of the MNI152 template")
    gm, wm = win["gm"].array * brain, win["wm"].array * brain
    csf = np.clip(brain.astype(np.float32) - gm - wm, 0.0, None)
    tissue = np.stack([(~brain).astype(np.float32), csf, gm, wm], axis=-1).astype(np.float32)
    t1 = win["t1"].with_array(_ixi_intensities(win["t1"].array, brain, head))
    if downsample > 1:
        from voxdiff.ops.resample import downsample_volume

        t1 = downsample_volume(t1, downsample)
        # Probabilities and the mask average over each block like the image; labels follow from them.
        tissue = np.stack([downsample_volume(win["t1"].with_array(tissue[..., k]), downsample).array
                           for k in range(tissue.shape[-1])], axis=-1)
        brain = downsample_volume(win["brain"], downsample).array >= 0.5
    reference = t1.with_array(tissue.argmax(axis=-1).astype(np.float32))
    reference.disk_dtype = np.dtype(np.uint8)
    return MniOnIxiGrid(t1=t1, brain=brain, reference=reference, tissue=tissue)
