"""Generalized DDIM sampler for a DDPM process (Song et al. 2021, eq. 12/16).

Between consecutive visited timesteps ``t -> prev``::

    x_prev = sqrt(abar_prev) x0_hat + sqrt(1 - abar_prev - sigma^2) eps_hat + sigma z,
    sigma  = eta * sqrt((1 - abar_prev) / (1 - abar_t) * (1 - abar_t / abar_prev)),

with ``abar_prev = 1`` ("clean") after the last visited timestep. ``eta = 0`` is deterministic
DDIM; ``eta = 1`` is exactly the DDPM posterior ``q(x_prev | x_t, x0_hat)`` of the (respaced)
chain. ``eps_hat`` is re-derived from the clipped ``x0_hat`` (as in guided-diffusion / GLIDE),
so the update depends only on ``(x_t, x0_hat)``.
"""

from __future__ import annotations

from typing import Any

import torch

from voxdiff.diffusion.base import StepOutput, expand_to, randn_like
from voxdiff.diffusion.conventions import check_eta, clip_x0, normalize_clip
from voxdiff.diffusion.samplers.base import DDPMGridSampler


class DDIMSampler(DDPMGridSampler):
    """DDIM with ``eta`` in ``[0, 1]`` (default 0: deterministic); options ``eta``, ``clip_sample``."""

    name = "ddim"
    default_eta = 0.0

    def configure(self, eta: float | None = None, clip_sample: float | None = None) -> dict[str, Any]:
        """``eta`` (None: the sampler's default) and the ``x0`` clamp bound (None: no clamp)."""
        self.eta = self.default_eta if eta is None else check_eta(eta, f"sampler {self.name!r}")
        self.clip_sample = normalize_clip(clip_sample)
        return {"eta": self.eta, "clip_sample": self.clip_sample}

    def step(self, model_output: torch.Tensor, t: int | torch.Tensor, x_t: torch.Tensor,
             generator: torch.Generator | None = None, *, source: torch.Tensor | None = None) -> StepOutput:
        """Generalized DDIM update from ``t`` (an int or a (B,) tensor) to the next visited timestep.

        Noise is drawn (from ``generator``) only when ``eta > 0``.
        """
        p = self.process
        batch = x_t.shape[0]
        abar_t = p.alpha_bar(t, batch)
        abar_prev = p.alpha_bar(self.previous_timestep(t), batch)
        x0_hat = clip_x0(p.predict_x0(model_output, x_t, t), self.clip_sample)
        # sigma^2 is the DDPM posterior variance between t and prev (zero when prev is clean).
        var = (1.0 - abar_prev) / (1.0 - abar_t) * (1.0 - abar_t / abar_prev)
        sigma = self.eta * var.clamp(min=0).sqrt()
        direction = (1.0 - abar_prev - sigma ** 2).clamp(min=0).sqrt()
        # x_prev = sqrt(abar_prev) x0_hat + direction * eps_hat with eps_hat from (x_t, x0_hat), regrouped.
        c_x0 = abar_prev.sqrt() - direction * abar_t.sqrt() / (1.0 - abar_t).sqrt()
        c_xt = direction / (1.0 - abar_t).sqrt()
        prev_sample = expand_to(c_x0, x_t) * x0_hat + expand_to(c_xt, x_t) * x_t
        if self.eta > 0:
            prev_sample = prev_sample + expand_to(sigma, x_t) * randn_like(x_t, generator)
        return StepOutput(prev_sample=prev_sample, pred_x0=x0_hat)
