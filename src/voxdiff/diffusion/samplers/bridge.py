"""The bridge sampler: deterministic (``eta = 0``) to BBDM-posterior (``eta = 1``) walks from ``y`` to ``x0``.

Reverse step from ``t`` to ``s < t`` given an estimate ``x0_hat`` (``eps_hat`` is the noise
implied by ``x_t`` and ``x0_hat``)::

    x_s = (1 - m_s) x0_hat + m_s y + sqrt(sigma_s^2 - c^2) eps_hat + c z,   c^2 = eta^2 v_{s|t}

where ``v_{s|t}`` is the variance of the bridge posterior ``q(x_s | x_t, x0)``
(:meth:`BridgeProcess.posterior_variance`). ``eta = 0`` is the deterministic DDIM-like
sampler, ``eta = 1`` the BBDM posterior sampler.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from voxdiff.diffusion.base import StepOutput, randn_like
from voxdiff.diffusion.bridge import TINY_VAR
from voxdiff.diffusion.conventions import (check_eta, check_start_step, check_steps, clip_x0, normalize_clip,
                                           scalar_timestep)
from voxdiff.diffusion.samplers.base import Sampler
from voxdiff.errors import VoxdiffError


class BridgeSampler(Sampler):
    """Bridge sampler; options ``eta`` (default: the checkpoint's) and ``clip_sample``."""

    name = "bridge"
    process_kinds = ("bridge",)

    def configure(self, eta: float | None = None, clip_sample: float | None = None) -> dict[str, Any]:
        """``eta`` in ``[0, 1]`` (None: 0) and the ``x0`` clamp bound (None: no clamp)."""
        self.eta = 0.0 if eta is None else check_eta(eta, f"sampler {self.name!r}")
        self.clip_sample = normalize_clip(clip_sample)
        return {"eta": self.eta, "clip_sample": self.clip_sample}

    def set_timesteps(self, num_inference_steps: int, start_step: int | None = None) -> None:
        """Evenly spaced descending steps from ``start_step`` (default T); the last step lands on 0.

        With ``k`` steps from ``T`` the visited timesteps are ``round(linspace(T, 0, k+1))[:-1]``;
        more steps than timesteps are capped.
        """
        T = self.process.num_train_timesteps
        top = check_start_step(start_step, 1, T, f"a {T}-step bridge")
        k = min(check_steps(num_inference_steps, 1, None), top)
        grid = torch.linspace(top, 0, k + 1, dtype=torch.float64).round().long()
        self.timesteps = grid[:-1]
        self._next = {int(a): int(b) for a, b in zip(grid[:-1], grid[1:])}

    def _prev_timestep(self, t: int) -> int:
        if t in self._next:
            return self._next[t]
        lower = [int(s) for s in self.timesteps if int(s) < t]
        return max(lower) if lower else 0

    def initial_state(self, shape: tuple[int, ...], *, source: torch.Tensor | None = None,
                      start: torch.Tensor | None = None, generator: torch.Generator | None = None,
                      device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """``y`` itself when starting at T; with ``start`` the forward bridge ``start -> y`` at ``timesteps[0]``."""
        p = self.process
        y = p.need_source(source, "initial_state")
        if tuple(y.shape) != tuple(shape):
            raise VoxdiffError(f"bridge source shape {tuple(y.shape)} does not match the sample shape {tuple(shape)}")
        y = y.to(device=device, dtype=dtype)
        t0 = int(self.timesteps[0])
        if start is None or t0 == p.num_train_timesteps:
            return y.clone()
        start = start.to(device=device, dtype=dtype)
        t = torch.full((shape[0],), t0, dtype=torch.long)
        return p.add_noise(start, randn_like(start, generator), t, source=y)

    def step(self, model_output: torch.Tensor, t: int | torch.Tensor, x_t: torch.Tensor,
             generator: torch.Generator | None = None, *, source: torch.Tensor | None = None) -> StepOutput:
        """One reverse step ``t -> s`` (the next visited timestep, 0 after the last)."""
        p = self.process
        y = p.need_source(source, "step")
        t = scalar_timestep(t)
        s = self._prev_timestep(t)
        t_vec = torch.full((x_t.shape[0],), t, dtype=torch.long)
        x0_hat = clip_x0(p.predict_x0(model_output, x_t, t_vec, source=y), self.clip_sample)
        m_t, m_s = float(p.m[t]), float(p.m[s])
        sig_t, var_s = float(p.sigma[t]), float(p.variance[s])
        mean = (1.0 - m_s) * x0_hat + m_s * y
        if var_s <= TINY_VAR:
            return StepOutput(prev_sample=mean, pred_x0=x0_hat)
        c2 = self.eta ** 2 * p.posterior_variance(t, s)
        if sig_t > math.sqrt(TINY_VAR):
            eps_hat = (x_t - (1.0 - m_t) * x0_hat - m_t * y) / sig_t
            mean = mean + math.sqrt(max(var_s - c2, 0.0)) * eps_hat
        if c2 > 0:
            mean = mean + math.sqrt(c2) * randn_like(x_t, generator)
        return StepOutput(prev_sample=mean, pred_x0=x0_hat)
