"""An exact denoiser for Gaussian-mixture data, to test and compare samplers without a trained network.

If every voxel of ``x0`` is drawn independently from ``sum_k w_k N(mu_k, s_k^2)``, then under a
DDPM process (``x_t = a x0 + b eps``, ``a = sqrt(abar_t)``, ``b = sqrt(1 - abar_t)``) the
posterior mean is analytic::

    E[x0 | x_t] = sum_k r_k(x_t) (mu_k + a s_k^2 (x_t - a mu_k) / (a^2 s_k^2 + b^2)),
    r_k ∝ w_k N(x_t; a mu_k, a^2 s_k^2 + b^2),

which is what a perfectly trained network predicts. :class:`GaussianMixtureDenoiser` returns it
in the process's prediction type (x0, epsilon or v), so a sampler driven by it should
reproduce the data distribution up to its own discretisation error.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

from voxdiff.diffusion.ddpm import DDPMProcess
from voxdiff.errors import VoxdiffError


class GaussianMixtureDenoiser:
    """``model_fn(x_t, t)`` of a perfect network for voxel-wise i.i.d. Gaussian-mixture data."""

    def __init__(self, process: DDPMProcess, means: Sequence[float], stds: Sequence[float],
                 weights: Sequence[float] | None = None) -> None:
        if process.kind != "ddpm":
            raise VoxdiffError(f"the Gaussian-mixture denoiser needs a DDPM process, got {process.kind!r}")
        if len(means) != len(stds) or not means or any(s <= 0 for s in stds):
            raise VoxdiffError("give as many positive stds as means (at least one component)")
        w = [1.0] * len(means) if weights is None else list(weights)
        if len(w) != len(means) or any(v < 0 for v in w) or sum(w) <= 0:
            raise VoxdiffError("mixture weights must be non-negative, one per component, not all zero")
        self.process = process
        self.means = torch.tensor(means, dtype=torch.float64)
        self.stds = torch.tensor(stds, dtype=torch.float64)
        self.weights = torch.tensor(w, dtype=torch.float64) / sum(w)
        self.calls = 0

    @property
    def mean(self) -> float:
        """Mean of the data distribution."""
        return float((self.weights * self.means).sum())

    @property
    def std(self) -> float:
        """Standard deviation of the data distribution."""
        second = float((self.weights * (self.stds ** 2 + self.means ** 2)).sum())
        return math.sqrt(max(second - self.mean ** 2, 0.0))

    def sample(self, shape: tuple[int, ...], generator: torch.Generator | None = None) -> torch.Tensor:
        """Draws from the data distribution (float64)."""
        comp = torch.multinomial(self.weights, math.prod(shape), replacement=True, generator=generator)
        z = torch.randn(math.prod(shape), generator=generator, dtype=torch.float64)
        return (self.means[comp] + self.stds[comp] * z).reshape(shape)

    def posterior_mean(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``E[x0 | x_t]`` (float64, shaped like ``x_t``) for per-sample timesteps ``t`` (B,)."""
        abar = self.process.alpha_bar(t, x_t.shape[0]).reshape(-1, *([1] * x_t.ndim))
        a, b2 = abar.sqrt(), 1.0 - abar
        x = x_t.double().unsqueeze(-1)
        var = a ** 2 * self.stds ** 2 + b2
        logr = torch.log(self.weights) - 0.5 * torch.log(var) - 0.5 * (x - a * self.means) ** 2 / var
        r = torch.softmax(logr, dim=-1)
        cond = self.means + a * self.stds ** 2 * (x - a * self.means) / var
        return (r * cond).sum(-1)

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The network output (in the process's prediction type) of a perfect model."""
        self.calls += 1
        x0 = self.posterior_mean(x_t, t)
        if self.process.prediction_type == "x0":
            return x0.to(x_t.dtype)
        abar = self.process.alpha_bar(t, x_t.shape[0]).reshape(-1, *([1] * (x_t.ndim - 1)))
        eps = (x_t.double() - abar.sqrt() * x0) / (1.0 - abar).sqrt()
        if self.process.prediction_type == "epsilon":
            return eps.to(x_t.dtype)
        return (abar.sqrt() * eps - (1.0 - abar).sqrt() * x0).to(x_t.dtype)
