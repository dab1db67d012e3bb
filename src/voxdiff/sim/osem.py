"""OSEM reconstruction for the Poisson model ``y ~ Poisson(w * A G x + b)``.

``A`` is a :class:`voxdiff.sim.projector.ParallelBeamProjector`, ``G`` an optional image-space
blur (PSF modelling, self-adjoint), ``w`` the multiplicative sinogram factors (sensitivity
constant x normalisation x attenuation; without attenuation for a non-attenuation-corrected
image) and ``b`` the additive expected background (scatter and randoms), which sits in the
EM denominator rather than being subtracted from the data. EM keeps the image non-negative.

Shapes: counts, ``w`` and ``b`` are ``(n_views, n_bins, C)``; images ``(n_pixels, C)`` with one
column per plane (and per reconstruction when several are run together).
"""

from __future__ import annotations

from typing import Callable, Optional

import torch

from voxdiff.errors import VoxdiffError
from voxdiff.sim.projector import ParallelBeamProjector, subset_views

__all__ = ["osem", "expected_counts", "poisson_nll"]

Blur = Optional[Callable[[torch.Tensor], torch.Tensor]]
_TINY = 1e-12


def expected_counts(x: torch.Tensor, projector: ParallelBeamProjector, w: torch.Tensor, b: torch.Tensor,
                    blur: Blur = None) -> torch.Tensor:
    """The model's mean sinogram ``w * A G x + b``, ``(n_views, n_bins, C)``."""
    g = projector.geometry
    gx = blur(x) if blur is not None else x
    return w * projector.forward(gx).reshape(g.n_views, g.n_bins, -1) + b


def poisson_nll(counts: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """Poisson negative log-likelihood per column, up to the constant ``sum log y!``."""
    mean = mean.clamp_min(_TINY)
    return (mean - counts * torch.log(mean)).sum(dim=(0, 1))


def osem(counts: torch.Tensor, projector: ParallelBeamProjector, w: torch.Tensor, b: torch.Tensor, *,
         n_iter: int, n_subsets: int, blur: Blur = None, x0: torch.Tensor | None = None,
         callback: Callable[[int, torch.Tensor], None] | None = None) -> torch.Tensor:
    """``n_iter`` OSEM iterations over ``n_subsets`` interleaved view subsets; returns ``(n_pixels, C)``.

    The start image is uniform per column, scaled so that its projection matches the
    background-subtracted counts. ``callback(iteration, x)`` runs after each full iteration.
    """
    if n_iter < 0:
        raise VoxdiffError(f"--iterations must be >= 0, got {n_iter}")
    g = projector.geometry
    if counts.shape[:2] != (g.n_views, g.n_bins):
        raise VoxdiffError(f"sinogram shape {tuple(counts.shape)} does not match {g.n_views} views x {g.n_bins} bins")
    views = subset_views(g.n_views, n_subsets)
    mats = projector.subset_matrices(n_subsets)
    n_cols = counts.shape[-1]
    # Each subset's data once, as contiguous blocks (no fancy indexing inside the loop).
    y_k = [counts[v].contiguous() for v in views]
    w_k = [w.expand_as(counts)[v].contiguous() for v in views]
    b_k = [b.expand_as(counts)[v].contiguous() for v in views]

    def back(k: int, sino: torch.Tensor) -> torch.Tensor:
        out = mats[k][1] @ sino.reshape(-1, n_cols)
        return blur(out) if blur is not None else out

    sens = [back(k, w_k[k]) for k in range(len(views))]
    if x0 is None:
        total = sum(s for s in sens)
        excess = (counts - b).clamp_min(0).sum(dim=(0, 1))
        x0 = (excess / total.sum(0).clamp_min(_TINY)).expand(g.n_pixels, n_cols)
    # Pixels no line of response of a subset sees get 0 there (EM leaves them unidentifiable).
    inv_sens = [torch.where(s > _TINY, 1.0 / s.clamp_min(_TINY), torch.zeros_like(s)) for s in sens]
    del sens
    x = x0.to(counts.dtype).clone()
    for it in range(n_iter):
        for k, v in enumerate(views):
            gx = blur(x) if blur is not None else x
            proj = (mats[k][0] @ gx).reshape(len(v), g.n_bins, n_cols)
            ratio = y_k[k] / (w_k[k] * proj + b_k[k]).clamp_min_(_TINY)
            x = x * back(k, ratio.mul_(w_k[k])) * inv_sens[k]
        if callback is not None:
            callback(it + 1, x)
    return x
