"""Ancestral DDPM sampling (Ho et al. 2020): the generalized DDIM update at ``eta = 1``.

Each step draws from the DDPM posterior ``q(x_prev | x_t, x0_hat)`` of the respaced chain, so
``K = T`` steps is vanilla ancestral DDPM. An ``eta`` below 1 is accepted so that checkpoints
whose process says ``sampler: ddpm`` and callers that pass ``eta`` keep sampling as before
(it is then the same update as ``ddim`` with that ``eta``).
"""

from __future__ import annotations

from voxdiff.diffusion.samplers.ddim import DDIMSampler


class DDPMAncestralSampler(DDIMSampler):
    """Ancestral DDPM (default ``eta = 1``); options ``eta``, ``clip_sample``."""

    name = "ddpm"
    default_eta = 1.0
