"""Gaussian point-spread function in image space, in torch (separable, zero padding, self-adjoint).

Zero padding and a symmetric kernel make the blur its own adjoint, so it can sit inside a PET
system model (``A G``) whose back-projection then applies ``G^T = G``.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

__all__ = ["FWHM_TO_SIGMA", "sigma_voxels", "gaussian_blur", "gaussian_post_filter"]

FWHM_TO_SIGMA = 1.0 / (2.0 * math.sqrt(2.0 * math.log(2.0)))


def sigma_voxels(fwhm_mm: float | Sequence[float], spacing_mm: Sequence[float]) -> tuple[float, ...]:
    """Gaussian sigma in voxels per axis for a FWHM in mm (one value for all axes, or one per axis)."""
    fwhm = [float(fwhm_mm)] * len(spacing_mm) if isinstance(fwhm_mm, (int, float)) else [float(f) for f in fwhm_mm]
    return tuple(f * FWHM_TO_SIGMA / float(s) for f, s in zip(fwhm, spacing_mm))


def _kernel(sigma: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    radius = max(1, int(math.ceil(3.0 * sigma)))
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return (k / k.sum()).to(dtype=dtype, device=device)


def gaussian_blur(volumes: torch.Tensor, sigma: Sequence[float], padding: str = "zeros") -> torch.Tensor:
    """Blur the last ``len(sigma)`` axes of ``volumes`` (any leading batch axes) with a Gaussian.

    ``sigma`` is in voxels per axis (0 leaves that axis alone). ``padding``: ``"zeros"`` (outside the
    array counts as zero; the self-adjoint blur of a system model) or ``"replicate"`` (the border voxel
    repeats, so a crop's edge is not darkened).
    """
    if padding not in ("zeros", "replicate"):
        raise ValueError(f"gaussian_blur padding must be 'zeros' or 'replicate', got {padding!r}")
    out = volumes
    nd = len(sigma)
    for k, s in enumerate(sigma):
        if s <= 0:
            continue
        axis = out.ndim - nd + k
        kern = _kernel(float(s), out.dtype, out.device)
        moved = out.movedim(axis, -1)
        shape = moved.shape
        flat = moved.reshape(-1, 1, shape[-1])
        half = kern.numel() // 2
        if padding == "replicate":
            flat = F.conv1d(F.pad(flat, (half, half), mode="replicate"), kern.view(1, 1, -1))
        else:
            flat = F.conv1d(flat, kern.view(1, 1, -1), padding=half)
        out = flat.reshape(shape).movedim(-1, axis)
    return out


def gaussian_post_filter(image, fwhm_mm: float, spacing_mm: Sequence[float]):
    """The clinical 3D Gaussian post-filter of a PET image (numpy in, numpy out; ``fwhm_mm`` 0 = the image).

    Edges repeat the border voxel (``mode="nearest"``), as scanner post-filters do, so the filter
    does not darken the edge of the field of view; the denoising benchmarks and the demo use it.
    """
    import numpy as np
    from scipy import ndimage as ndi

    if not fwhm_mm >= 0:
        raise ValueError(f"the post-filter FWHM must be >= 0 mm, got {fwhm_mm}")
    image = np.asarray(image)
    if fwhm_mm == 0:
        return image
    return ndi.gaussian_filter(image, sigma=sigma_voxels(fwhm_mm, spacing_mm), mode="nearest")
