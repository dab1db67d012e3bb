"""Gaussian DDPM noise process (Ho et al. 2020): forward marginals, targets, schedule lookups.

Forward process: ``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps`` for integer ``t in 0 .. T-1``;
``t = -1`` in the schedule lookups means "clean" (``abar = 1``), the state after the last
reverse step. The samplers that walk it back (``ddpm``, ``ddim``, ``dpmsolver++``) live in
:mod:`voxdiff.diffusion.samplers`; the process only remembers which one (and which ``eta`` /
``clip_sample``) its checkpoint samples with by default.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from voxdiff.diffusion.base import NoiseProcess, expand_to
from voxdiff.diffusion.conventions import check_eta, normalize_clip
from voxdiff.errors import VoxdiffError

BETA_SCHEDULES = ("linear", "scaled_linear", "cosine")
DDPM_PREDICTION_TYPES = ("epsilon", "x0", "v")
_MAX_BETA = 0.999


def make_betas(num_train_timesteps: int, schedule: str = "linear", beta_start: float = 1e-4,
               beta_end: float = 0.02, cosine_s: float = 0.008) -> torch.Tensor:
    """Beta schedule (T,) in float64.

    ``linear`` / ``scaled_linear`` use ``beta_start..beta_end`` as given for ``T = 1000`` and scale
    both by ``1000 / T`` (Nichol & Dhariwal), so shorter chains reach the same total noise;
    ``scaled_linear`` is linear in ``sqrt(beta)``. ``cosine`` is Nichol & Dhariwal's
    ``abar(t) = cos^2(((t/T) + s) / (1 + s) * pi/2)``. Betas are capped at 0.999.
    """
    T = int(num_train_timesteps)
    scale = 1000.0 / T
    if schedule == "linear":
        betas = np.linspace(scale * beta_start, scale * beta_end, T, dtype=np.float64)
    elif schedule == "scaled_linear":
        betas = np.linspace(math.sqrt(scale * beta_start), math.sqrt(scale * beta_end), T, dtype=np.float64) ** 2
    elif schedule == "cosine":
        steps = np.arange(T + 1, dtype=np.float64) / T
        abar = np.cos((steps + cosine_s) / (1 + cosine_s) * math.pi / 2) ** 2
        betas = 1.0 - abar[1:] / abar[:-1]
    else:
        raise VoxdiffError(f"unknown beta schedule {schedule!r}: choose one of {', '.join(BETA_SCHEDULES)}.")
    return torch.from_numpy(np.clip(betas, 0.0, _MAX_BETA))


class DDPMProcess(NoiseProcess):
    """Gaussian diffusion ``q(x_t | x0) = N(sqrt(abar_t) x0, (1 - abar_t) I)``.

    Args:
        num_train_timesteps: ``T``; training timesteps are ``0 .. T-1``.
        beta_schedule: ``"linear"`` | ``"scaled_linear"`` | ``"cosine"`` (see :func:`make_betas`).
        prediction_type: what the network outputs: ``"epsilon"`` | ``"x0"`` | ``"v"``
            (``v = sqrt(abar) eps - sqrt(1 - abar) x0``).
        clip_sample: default clamp bound of the samplers' ``x0`` estimate (data live in
            ``[-1, 1]``), or ``None``; the old form ``True``/``False`` (+ ``clip_range``) is accepted.
        clip_range: old form only: the bound used when ``clip_sample`` is ``True``.
        sampler: the default sampler name (``"ddpm"`` ancestral, ``"ddim"``, ``"dpmsolver++"``).
        eta: the default sampler's ``eta`` (``None``: that sampler's own default).
        beta_start, beta_end: linear-schedule endpoints for ``T = 1000`` (scaled by ``1000 / T``).
        cosine_s: offset of the cosine schedule.

    Attributes: ``betas``, ``alphas``, ``alphas_cumprod`` (float64, (T,)).
    """

    kind = "ddpm"

    def __init__(self, num_train_timesteps: int = 1000, beta_schedule: str = "linear",
                 prediction_type: str = "epsilon", clip_sample: bool | float | None = True,
                 clip_range: float | None = None, sampler: str = "ddpm", eta: float | None = None,
                 beta_start: float = 1e-4, beta_end: float = 0.02, cosine_s: float = 0.008) -> None:
        from voxdiff.diffusion.samplers import check_sampler_name

        if int(num_train_timesteps) < 1:
            raise VoxdiffError(f"num_train_timesteps must be >= 1, got {num_train_timesteps}.")
        if prediction_type not in DDPM_PREDICTION_TYPES:
            raise VoxdiffError(f"DDPM prediction_type {prediction_type!r} is not supported: "
                               f"choose one of {', '.join(DDPM_PREDICTION_TYPES)}.")
        check_sampler_name(sampler, self.kind)
        self.num_train_timesteps = int(num_train_timesteps)
        self.prediction_type = prediction_type
        self.clip_sample = normalize_clip(clip_sample, clip_range)
        self.default_sampler = sampler
        self.default_eta = None if eta is None else check_eta(eta, f"DDPM process (sampler {sampler!r})")
        self._config = dict(num_train_timesteps=self.num_train_timesteps, beta_schedule=beta_schedule,
                            prediction_type=prediction_type, clip_sample=self.clip_sample, sampler=sampler,
                            eta=self.default_eta, beta_start=float(beta_start), beta_end=float(beta_end),
                            cosine_s=float(cosine_s))
        self.betas = make_betas(self.num_train_timesteps, beta_schedule, beta_start, beta_end, cosine_s)
        self.alphas = 1.0 - self.betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)

    def sampler_defaults(self, name: str) -> dict:
        """``clip_sample`` for every sampler; the stored ``eta`` only for the default sampler."""
        out: dict = {"clip_sample": self.clip_sample}
        if name == self.default_sampler and self.default_eta is not None:
            out["eta"] = self.default_eta
        return out

    # ----------------------------------------------------------------- schedule lookups
    def alpha_bar(self, t: torch.Tensor | int, batch: int) -> torch.Tensor:
        """``abar_t`` as float64 (B,); ``t = -1`` means clean (``abar = 1``)."""
        t = torch.as_tensor(t, dtype=torch.long).reshape(-1).cpu()
        if (t < -1).any() or (t >= self.num_train_timesteps).any():
            raise VoxdiffError(f"DDPM timesteps must lie in -1..{self.num_train_timesteps - 1}, got {t.tolist()}")
        abar = torch.where(t >= 0, self.alphas_cumprod[t.clamp(min=0)], torch.ones((), dtype=torch.float64))
        return abar.expand(batch) if abar.numel() == 1 else abar

    def _coefs(self, t: torch.Tensor | int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``sqrt(abar_t)`` and ``sqrt(1 - abar_t)`` shaped to broadcast against ``like``.

        Computed in float64 and cast last: ``1 - abar`` near ``t = 0`` loses digits in float32.
        """
        abar = self.alpha_bar(t, like.shape[0])
        return expand_to(abar.sqrt(), like), expand_to((1.0 - abar).sqrt(), like)

    # ----------------------------------------------------------------- training side
    def sample_timesteps(self, batch: int, device: torch.device | str = "cpu",
                         generator: torch.Generator | None = None) -> torch.Tensor:
        """Uniform integer timesteps in ``0 .. T-1``, shape (B,)."""
        gen_device = generator.device if generator is not None else "cpu"
        t = torch.randint(0, self.num_train_timesteps, (batch,), generator=generator, device=gen_device)
        return t.to(device)

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor,
                  source: torch.Tensor | None = None) -> torch.Tensor:
        """``sqrt(abar_t) x0 + sqrt(1 - abar_t) noise``; ``source`` is ignored."""
        a, b = self._coefs(t, x0)
        return a * x0 + b * noise

    def training_target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor,
                        source: torch.Tensor | None = None) -> torch.Tensor:
        """``noise`` (epsilon), ``x0`` (x0) or ``sqrt(abar) noise - sqrt(1 - abar) x0`` (v)."""
        if self.prediction_type == "epsilon":
            return noise
        if self.prediction_type == "x0":
            return x0
        a, b = self._coefs(t, x0)
        return a * noise - b * x0

    def predict_x0(self, model_output: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor,
                   source: torch.Tensor | None = None) -> torch.Tensor:
        """Unclipped ``x0`` estimate from a network output at ``(x_t, t)``."""
        if self.prediction_type == "x0":
            return model_output
        a, b = self._coefs(t, x_t)
        if self.prediction_type == "epsilon":
            return (x_t - b * model_output) / a
        return a * x_t - b * model_output

    def predict_epsilon(self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
        """The noise consistent with ``x_t`` and an ``x0`` estimate: ``(x_t - sqrt(abar) x0) / sqrt(1 - abar)``."""
        a, b = self._coefs(t, x_t)
        return (x_t - a * x0) / b
