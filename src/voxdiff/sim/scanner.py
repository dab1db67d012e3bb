"""Scanner effects in sinogram space: detector normalisation and the randoms + scatter background.

Sinograms here are ``(n_views, n_bins, n_planes)`` tensors (see :mod:`voxdiff.sim.projector`).

* **Normalisation** (per-bin efficiency ``n``): a smooth random field (white noise blurred over
  views, bins and planes, renormalised to ``spread`` relative sd) times a mild radial profile
  (efficiency falling by ``radial_drop`` towards the edge of the field of view, as the
  crystal-face angle grows); mean 1. Seeded from the base seed only: one scanner for all subjects.
* **Background** (additive expected counts ``b = n * scatter + randoms``): scatter is the
  attenuated true projection heavily blurred (FWHM 100 mm radially, 30 degrees over views, 20 mm
  axially: single-scatter distributions are broad and smooth); randoms are flat over each plane's
  sinogram, scaled per plane by the axially smoothed trues. Scatter and randoms are scaled so that
  together they are ``background_fraction`` of the prompts, ``randoms_share`` of it randoms.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage as ndi

from voxdiff.errors import VoxdiffError
from voxdiff.sim.psf import FWHM_TO_SIGMA

__all__ = ["normalisation_factors", "background_model", "SCATTER_FWHM"]

#: Blur of the scatter estimate: (views in degrees, radial mm, axial mm).
SCATTER_FWHM = (30.0, 100.0, 20.0)


def normalisation_factors(n_views: int, n_bins: int, n_planes: int, *, bin_mm: float, plane_mm: float,
                          spread: float = 0.1, radial_drop: float = 0.1, seed: int | list[int] = 0) -> torch.Tensor:
    """Smoothly varying detector efficiencies, mean 1, float32 ``(n_views, n_bins, n_planes)``."""
    if not 0 <= spread < 0.5:
        raise VoxdiffError(f"--norm-spread must lie in [0, 0.5), got {spread}")
    rng = np.random.default_rng(seed)
    field = rng.standard_normal((n_views, n_bins, n_planes))
    # Correlation lengths of a few degrees, ~10 mm radially and axially: module-scale variation.
    sig = (3.0 * n_views / 180.0, 10.0 / bin_mm, 10.0 / plane_mm)
    field = ndi.gaussian_filter(field, [max(s, 0.5) for s in sig], mode=("wrap", "reflect", "reflect"))
    field = torch.as_tensor((field - field.mean()) / max(field.std(), 1e-12))
    s = (torch.arange(n_bins, dtype=torch.float64) - (n_bins - 1) / 2) / ((n_bins - 1) / 2)
    radial = 1.0 - radial_drop * s**2
    eff = (1.0 + spread * field).clamp_min(0.2) * radial[None, :, None]
    return (eff / eff.mean()).to(torch.float32)


def background_model(trues_attenuated: torch.Tensor, norm: torch.Tensor, *, background_fraction: float,
                     randoms_share: float, bin_mm: float, plane_mm: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(scatter before normalisation, randoms) for noise-free trues ``n * a * A x`` (see module doc).

    ``trues_attenuated`` is the attenuated projection *before* normalisation (``a * A x``); the
    prompts are then ``n * (a * A x + scatter) + randoms`` and ``n * scatter + randoms`` is
    ``background_fraction`` of their total.
    """
    if not 0 <= background_fraction < 1:
        raise VoxdiffError(f"--background-fraction must lie in [0, 1), got {background_fraction}")
    if not 0 <= randoms_share <= 1:
        raise VoxdiffError(f"the randoms share of the background must lie in [0, 1], got {randoms_share}")
    n_views, n_bins, n_planes = trues_attenuated.shape
    trues_total = float((norm * trues_attenuated).sum())
    zeros = torch.zeros_like(trues_attenuated)
    if background_fraction == 0 or trues_total <= 0:
        return zeros, zeros
    background_total = trues_total * background_fraction / (1.0 - background_fraction)
    fv, fr, fz = SCATTER_FWHM
    sig = (fv * FWHM_TO_SIGMA * n_views / 180.0, fr * FWHM_TO_SIGMA / bin_mm, fz * FWHM_TO_SIGMA / plane_mm)
    # Views wrap around (view 0 follows view n-1 with the radial axis flipped): pad by mirroring.
    pad = min(n_views, int(np.ceil(4 * sig[0])) + 1)
    t = trues_attenuated.detach().cpu().numpy()
    wrapped = np.concatenate([t[-pad:, ::-1], t, t[:pad, ::-1]], 0)
    blurred = ndi.gaussian_filter(wrapped, sig, mode="constant", truncate=4.0)[pad:pad + n_views]
    scatter = torch.as_tensor(np.maximum(blurred, 0), dtype=torch.float32, device=trues_attenuated.device)
    per_plane = ndi.gaussian_filter1d(t.sum(axis=(0, 1)).astype(np.float64), sig[2], mode="nearest")
    randoms = torch.as_tensor(np.broadcast_to(np.maximum(per_plane, 0)[None, None, :], t.shape).copy(),
                              dtype=torch.float32, device=trues_attenuated.device)
    s_total, r_total = float((norm * scatter).sum()), float(randoms.sum())
    scatter = scatter * ((1 - randoms_share) * background_total / s_total if s_total > 0 else 0.0)
    randoms = randoms * (randoms_share * background_total / r_total if r_total > 0 else 0.0)
    return scatter, randoms
