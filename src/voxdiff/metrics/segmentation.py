"""Per-label segmentation overlap of 3D label maps: Dice and HD95 in mm (conventions: ``docs/metrics.md``).

Both structures empty: Dice 1, HD95 0. Exactly one empty: Dice 0, HD95 NaN (undefined).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence

import numpy as np
import torch

from voxdiff.errors import VoxdiffError

__all__ = ["SEG_METRICS", "dice", "hd95", "segmentation_metrics"]

SEG_METRICS = ("dice", "hd95")


def _crop_to_union(a: np.ndarray, b: np.ndarray, margin: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Both masks cropped to their joint bounding box plus ``margin`` background voxels.

    Dice and surface distances do not change (the margin keeps border voxels as surface
    voxels), while small structures in whole-brain label maps cost a fraction of the time.
    """
    union = a | b
    box = []
    for axis in range(union.ndim):
        hit = np.flatnonzero(union.any(axis=tuple(i for i in range(union.ndim) if i != axis)))
        box.append(slice(max(int(hit[0]) - margin, 0), int(hit[-1]) + 1 + margin))
    return a[tuple(box)], b[tuple(box)]


def _binary_tensor(mask: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None, None]


def dice(pred_mask: np.ndarray, true_mask: np.ndarray) -> float:
    """Dice overlap of two binary masks (MONAI); 1.0 when both are empty."""
    from monai.metrics import compute_dice

    pred_mask, true_mask = np.asarray(pred_mask).astype(bool), np.asarray(true_mask).astype(bool)
    if pred_mask.shape != true_mask.shape:
        raise VoxdiffError(f"prediction shape {pred_mask.shape} differs from reference shape {true_mask.shape}")
    if not pred_mask.any() and not true_mask.any():
        return 1.0
    pred_mask, true_mask = _crop_to_union(pred_mask, true_mask)
    value = compute_dice(_binary_tensor(pred_mask), _binary_tensor(true_mask), include_background=True, ignore_empty=False)
    return float(value.item())


def hd95(pred_mask: np.ndarray, true_mask: np.ndarray, spacing: Sequence[float] = (1.0, 1.0, 1.0)) -> float:
    """Symmetric 95th-percentile Hausdorff distance between mask surfaces, in the units of ``spacing`` (mm).

    MONAI's definition: the 95th percentile of the surface distances from prediction to
    reference and from reference to prediction, the larger of the two. 0.0 when both masks
    are empty, NaN when exactly one is.
    """
    from monai.metrics import compute_hausdorff_distance

    pred_mask, true_mask = np.asarray(pred_mask).astype(bool), np.asarray(true_mask).astype(bool)
    if pred_mask.shape != true_mask.shape:
        raise VoxdiffError(f"prediction shape {pred_mask.shape} differs from reference shape {true_mask.shape}")
    has_pred, has_true = bool(pred_mask.any()), bool(true_mask.any())
    if not has_pred and not has_true:
        return 0.0
    if has_pred != has_true:
        return math.nan
    spacing = [float(s) for s in spacing]
    if len(spacing) != pred_mask.ndim:
        raise ValueError(f"spacing {spacing} needs one value per axis of a {pred_mask.ndim}D mask")
    pred_mask, true_mask = _crop_to_union(pred_mask, true_mask)
    with warnings.catch_warnings():
        # MONAI 1.5+ warns about one of its own deprecated internal arguments.
        warnings.simplefilter("ignore", FutureWarning)
        value = compute_hausdorff_distance(_binary_tensor(pred_mask), _binary_tensor(true_mask),
                                           include_background=True, percentile=95, spacing=spacing)
    return float(value.item())


def _as_labels(array: np.ndarray, what: str) -> np.ndarray:
    array = np.asarray(array)
    if np.issubdtype(array.dtype, np.integer):
        return array
    if not np.isfinite(array).all():
        raise VoxdiffError(f"{what} label map contains NaN/Inf values")
    rounded = np.rint(array)
    if np.abs(array - rounded).max(initial=0.0) > 1e-3:
        raise VoxdiffError(f"{what} is not a label map (it holds non-integer values)")
    return rounded.astype(np.int64)


def segmentation_metrics(
    pred_labels: np.ndarray,
    true_labels: np.ndarray,
    labels: Iterable[int] | None = None,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
) -> dict[int, dict[str, float]]:
    """Per-label Dice and HD95 (mm) of a predicted label map against the reference.

    ``labels`` defaults to every nonzero label present in either map. Returns
    ``{label: {"dice": float, "hd95": float}}``; empty-structure conventions as in :func:`hd95`.
    """
    pred = _as_labels(pred_labels, "prediction")
    true = _as_labels(true_labels, "reference")
    if pred.shape != true.shape:
        raise VoxdiffError(f"prediction shape {pred.shape} differs from reference shape {true.shape}")
    if labels is None:
        labels = sorted(int(v) for v in np.union1d(np.unique(pred), np.unique(true)) if v != 0)
    out: dict[int, dict[str, float]] = {}
    for label in labels:
        p, t = pred == int(label), true == int(label)
        out[int(label)] = {"dice": dice(p, t), "hd95": hd95(p, t, spacing)}
    return out
