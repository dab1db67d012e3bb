"""Losses and metrics specific to puzzled (space-to-channel) prediction.

A network working on puzzled volumes predicts each ``r x r x r`` block's voxels in separate
channels, so nothing ties neighbouring voxels across block borders together: errors show up
as a grid of seams with period ``r``. :func:`gradient_difference_loss` penalises wrong
voxel-to-voxel differences on the unpuzzled grid; :func:`seam_metric` measures the artefact
on a known grid, :func:`worst_seam_metric` on whichever grid alignment shows it most.
"""

from __future__ import annotations

import itertools
from typing import Sequence

import numpy as np
import torch

from voxdiff.errors import VoxdiffError
from voxdiff.ops.puzzle import as_triple


def spatial_differences(x: torch.Tensor) -> list[torch.Tensor]:
    """Forward finite differences of ``x`` along each of its last three axes (D, H, W)."""
    return [torch.diff(x, dim=axis) for axis in (-3, -2, -1)]


def gradient_difference_loss(pred: torch.Tensor, target: torch.Tensor, reduction: str = "mean",
                             norm: str = "l1") -> torch.Tensor:
    """Puzzle-gradient loss: distance between the finite differences of ``pred`` and ``target``.

    Both are unpuzzled volumes (..., D, H, W) of the same shape. ``norm`` is ``"l1"`` or
    ``"l2"`` (squared error). ``reduction``: ``"mean"`` (average of the three per-axis means),
    ``"sum"`` (sum over all differences) or ``"none"`` (per-sample mean, shape (B,) for
    inputs with a leading batch axis).
    """
    if pred.shape != target.shape:
        raise VoxdiffError(f"gradient_difference_loss needs equal shapes, got {tuple(pred.shape)} "
                           f"and {tuple(target.shape)}")
    if pred.ndim < 3:
        raise VoxdiffError(f"gradient_difference_loss needs at least 3 spatial axes, got shape {tuple(pred.shape)}")
    if norm not in ("l1", "l2"):
        raise VoxdiffError(f"norm must be 'l1' or 'l2', got {norm!r}")
    if reduction not in ("mean", "sum", "none"):
        raise VoxdiffError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    errs = []
    for dp, dt in zip(spatial_differences(pred), spatial_differences(target)):
        e = dp - dt
        errs.append(e.abs() if norm == "l1" else e.square())
    if reduction == "sum":
        return sum(e.sum() for e in errs)
    if reduction == "none":
        if pred.ndim < 4:
            raise VoxdiffError("reduction='none' needs a leading batch axis")
        return sum(e.flatten(1).mean(dim=1) for e in errs) / 3.0
    return sum(e.mean() for e in errs) / 3.0


def _seam_profiles(volume: np.ndarray | torch.Tensor, factor: int | Sequence[int], name: str):
    """Per axis with period ``r > 1``: ``(squared steps summed over the other axes, their count per step, r)``.

    Every grid alignment's border and other sums follow from these 1D profiles without re-reading
    the volume. Axes with ``r == 1`` give ``None`` (every step would be a border: no reference).
    """
    if isinstance(volume, torch.Tensor):
        arr = volume.detach().to("cpu", torch.float64).numpy()
    else:
        arr = np.asarray(volume, dtype=np.float64)
    if arr.ndim < 3:
        raise VoxdiffError(f"{name} needs a 3D volume, got shape {arr.shape}")
    rs = as_triple(factor)
    profiles = []
    for axis, r in zip((-3, -2, -1), rs):
        if r == 1:
            profiles.append(None)
            continue
        per = np.moveaxis(np.diff(arr, axis=axis) ** 2, axis, 0)
        per = per.reshape(per.shape[0], -1)
        profiles.append((per.sum(axis=1), per.shape[1], r))
    return profiles, arr.shape[-3:], rs


def _seam_ratio(profiles, offsets: Sequence[int]) -> float | None:
    """Border / other mean squared step for block grids starting at ``offsets``; None without borders."""
    b_sum = o_sum = 0.0
    b_n = o_n = 0
    for p, off in zip(profiles, offsets):
        if p is None:
            continue
        prof, width, r = p
        border = (np.arange(prof.size) + 1 - off) % r == 0
        b_sum += float(prof[border].sum())
        o_sum += float(prof[~border].sum())
        b_n += int(border.sum()) * width
        o_n += int((~border).sum()) * width
    if b_n == 0 or o_n == 0:
        return None
    border_mean, other_mean = b_sum / b_n, o_sum / o_n
    if other_mean == 0.0:
        return 1.0 if border_mean == 0.0 else float("inf")
    return border_mean / other_mean


def seam_metric(volume: np.ndarray | torch.Tensor, factor: int | Sequence[int]) -> float:
    """Blockiness at puzzle period ``factor``: mean squared step across block borders / elsewhere.

    For each spatial axis with period ``r > 1``, the difference between voxels ``i`` and
    ``i+1`` is a *border* difference when ``(i + 1) % r == 0``. Returns
    ``mean(border diff^2) / mean(other diff^2)`` pooled over axes: about 1 for natural images,
    clearly above 1 for grid artefacts. Accepts numpy or torch, (D, H, W) or (..., D, H, W).
    """
    profiles, shape, rs = _seam_profiles(volume, factor, "seam_metric")
    ratio = _seam_ratio(profiles, (0, 0, 0))
    if ratio is None:
        raise VoxdiffError(f"seam_metric: volume of shape {shape} has no block borders for factor {rs}")
    return ratio


def worst_seam_metric(volume: np.ndarray | torch.Tensor, factor: int | Sequence[int]) -> tuple[float, tuple[int, int, int]]:
    """:func:`seam_metric` at the block-grid alignment where it is largest, and that offset per axis.

    A volume served with padding (``predict_volume`` pads to the network's multiple) has its
    puzzle grid shifted by the padding, which a scorer may not know; every offset ``0..r-1`` per
    axis is tried (block borders between ``i`` and ``i+1`` where ``(i + 1 - offset) % r == 0``).
    For a volume without a grid the maximum of the ``r^3`` ratios sits slightly above 1.
    """
    profiles, shape, rs = _seam_profiles(volume, factor, "worst_seam_metric")
    if all(p is None for p in profiles):
        raise VoxdiffError(f"worst_seam_metric: factor {rs} has no period above 1")
    best, best_off = None, (0, 0, 0)
    for offsets in itertools.product(*(range(r) for r in rs)):
        ratio = _seam_ratio(profiles, offsets)
        if ratio is not None and (best is None or ratio > best):
            best, best_off = ratio, tuple(int(o) for o in offsets)
    if best is None:
        raise VoxdiffError(f"worst_seam_metric: volume of shape {shape} has no block borders for factor {rs}")
    return best, best_off  # type: ignore[return-value]
