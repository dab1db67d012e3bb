"""The MNI152 template on the IXI grid: orientation, shape, world positions, intensities, reference labels."""

from __future__ import annotations

import numpy as np
import pytest

from voxdiff.demo.mni import (IXI_AIR_LEVEL, IXI_BRAIN_QUANTILES, IXI_HEAD_PROFILE, IXI_SHAPE, mni152_volumes,
                              mni_on_ixi_grid, reorient_volume, window_volume)
from voxdiff.io import Volume


def _world(affine: np.ndarray, idx: np.ndarray) -> np.ndarray:
    return (affine[:3, :3] @ idx.T).T + affine[:3, 3]


def test_reorient_and_window_keep_every_voxel_at_its_world_position(tiny_affine):
    rng = np.random.default_rng(0)
    vol = Volume(array=rng.random((5, 6, 7)).astype(np.float32), affine=tiny_affine)
    psr = reorient_volume(vol, "PSR")
    assert psr.orientation == "PSR" and sorted(psr.shape) == sorted(vol.shape)
    win = window_volume(psr, (-2, 1, 3), (8, 4, 6))  # padded on one side, cropped on others
    assert win.shape == (8, 4, 6)
    idx = np.argwhere(np.ones(vol.shape, bool))
    for out in (psr, win):
        new = np.linalg.solve(out.affine[:3, :3], (_world(vol.affine, idx) - out.affine[:3, 3]).T).T
        assert np.allclose(new, np.rint(new), atol=1e-6)
        new = np.rint(new).astype(int)
        inside = np.all((new >= 0) & (new < out.shape), axis=1)
        assert inside.any()
        assert np.array_equal(out.array[tuple(new[inside].T)], vol.array[tuple(idx[inside].T)])
    # Voxels of the window outside the source are filled with zeros.
    assert np.all(win.array[:2] == 0)


def test_mni_on_ixi_grid_is_psr_120x120x90_at_2mm_in_mni_world():
    grid = mni_on_ixi_grid()
    t1 = grid.t1
    assert t1.shape == IXI_SHAPE and t1.orientation == "PSR" and t1.spacing == (2.0, 2.0, 2.0)
    for vol in (grid.reference,):
        assert vol.shape == t1.shape and np.allclose(vol.affine, t1.affine)
    src = mni152_volumes("brain", "gm")
    assert src["brain"].orientation == "RAS"
    # Each template voxel lands on the IXI-grid voxel at the same world position, with its value.
    idx = np.argwhere(np.ones(src["brain"].shape, bool))
    new = np.linalg.solve(t1.affine[:3, :3], (_world(src["brain"].affine, idx) - t1.affine[:3, 3]).T).T
    assert np.allclose(new, np.rint(new), atol=1e-5)
    new = np.rint(new).astype(int)
    inside = np.all((new >= 0) & (new < IXI_SHAPE), axis=1)
    brain = src["brain"].array[tuple(idx.T)] > 0
    assert brain[~inside].sum() == 0, "the whole brain fits the IXI grid"
    assert np.array_equal(grid.brain[tuple(new[inside].T)], brain[inside])
    gm = src["gm"].array[tuple(idx[inside].T)] * brain[inside]
    assert np.allclose(grid.tissue[..., 2][tuple(new[inside].T)], gm)
    # The brain sits where IXI brains do (bounding-box centre within a voxel of the IXI mean).
    hit = np.argwhere(grid.brain)
    assert np.all(np.abs((hit.min(0) + hit.max(0)) / 2 - np.array([65.8, 67.3, 44.2])) <= 1.0)


def test_t1_intensities_follow_ixi_brain_quantiles_and_head_profile_and_reference_is_plausible():
    from scipy import ndimage

    grid = mni_on_ixi_grid()
    t1, brain, ref = grid.t1.array, grid.brain, grid.reference.array
    assert t1.min() >= 0
    for pct in (5, 50, 95):
        assert np.percentile(t1[brain], pct) == pytest.approx(IXI_BRAIN_QUANTILES[pct], rel=0.02)
    # Outside the brain: IXI's head profile by 2 mm shell, then air.
    shell = np.ceil(ndimage.distance_transform_edt(~brain)).astype(int)
    median = IXI_BRAIN_QUANTILES[50]
    for k in (1, 4, len(IXI_HEAD_PROFILE)):
        assert np.allclose(t1[shell == k], IXI_HEAD_PROFILE[k - 1] * median, rtol=1e-5)
    assert np.allclose(t1[shell > len(IXI_HEAD_PROFILE)], IXI_AIR_LEVEL * median, rtol=1e-5)
    assert np.all(mni_on_ixi_grid(head=False).t1.array[~brain] == 0)
    assert grid.reference.disk_dtype == np.uint8
    assert np.array_equal(ref, np.rint(ref)) and set(np.unique(ref)) == {0.0, 1.0, 2.0, 3.0}
    assert np.all(ref[~brain] == 0) and np.all(ref[brain] > 0)
    frac = [float((ref[brain] == k).mean()) for k in (1, 2, 3)]
    # IXI's DLMUSE tissue labels: CSF ~0.11, GM ~0.50, WM ~0.39 of the brain.
    assert 0.03 < frac[0] < 0.2 and 0.4 < frac[1] < 0.7 and 0.2 < frac[2] < 0.5, frac
    assert np.allclose(grid.tissue.sum(-1)[brain], np.maximum(grid.tissue[..., 2:].sum(-1)[brain], 1.0), atol=1e-5)


def test_downsampled_grid_block_averages_the_2mm_window():
    from voxdiff.ops.resample import downsample_geometry

    fine, coarse = mni_on_ixi_grid(), mni_on_ixi_grid((60, 60, 45), downsample=2)
    assert coarse.t1.shape == (60, 60, 45) and coarse.t1.spacing == (4.0, 4.0, 4.0)
    _, aff = downsample_geometry(fine.t1.shape, fine.t1.affine, 2)
    assert np.allclose(coarse.t1.affine, aff)
    assert np.allclose(coarse.t1.array, fine.t1.array.reshape(60, 2, 60, 2, 45, 2).mean(axis=(1, 3, 5)), atol=1e-3)
    assert coarse.reference.shape == coarse.t1.shape and coarse.brain.shape == coarse.t1.shape
