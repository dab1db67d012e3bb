"""Gaussian DDPM noise process with a respaced generalized-DDIM sampler.

Forward process (Ho et al. 2020): ``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps`` for integer
``t in 0 .. T-1``. The sampler visits ``K`` evenly spaced timesteps (descending) and moves between
consecutive visited timesteps with the generalized DDIM update (Song et al. 2021, eq. 12/16):

    x_prev = sqrt(abar_prev) x0_hat + sqrt(1 - abar_prev - sigma^2) eps_hat + sigma z,
    sigma  = eta * sqrt((1 - abar_prev) / (1 - abar_t) * (1 - abar_t / abar_prev)),

with ``abar_prev = 1`` ("clean") after the last visited timestep. ``eta = 0`` is deterministic
DDIM; ``eta = 1`` is exactly the DDPM posterior ``q(x_prev | x_t, x0_hat)`` of the (respaced)
chain, so ``K = T`` with ``eta = 1`` is vanilla ancestral DDPM. ``eps_hat`` is re-derived from the
clipped ``x0_hat`` (as in guided-diffusion / GLIDE) so the update depends only on ``(x_t, x0_hat)``.

``start_step`` (PD-DDPM) begins the chain at ``t'`` from ``q(x_t' | x0 = start)`` instead of noise.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from voxdiff.diffusion.base import NoiseProcess, StepOutput, expand_to, randn_like
from voxdiff.errors import VoxdiffError

BETA_SCHEDULES = ("linear", "scaled_linear", "cosine")
DDPM_PREDICTION_TYPES = ("epsilon", "x0", "v")
SAMPLERS = {"ddpm": 1.0, "ddim": 0.0}
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
    """Gaussian diffusion ``q(x_t | x0) = N(sqrt(abar_t) x0, (1 - abar_t) I)`` with a DDIM/DDPM sampler.

    Args:
        num_train_timesteps: ``T``; training timesteps are ``0 .. T-1``.
        beta_schedule: ``"linear"`` | ``"scaled_linear"`` | ``"cosine"`` (see :func:`make_betas`).
        prediction_type: what the network outputs: ``"epsilon"`` | ``"x0"`` | ``"v"``
            (``v = sqrt(abar) eps - sqrt(1 - abar) x0``).
        clip_sample: clamp the predicted ``x0`` to ``[-clip_range, clip_range]`` inside :meth:`step`
            (data live in ``[-1, 1]``); :meth:`predict_x0` itself never clips.
        clip_range: clamp bound used when ``clip_sample``.
        sampler: ``"ddpm"`` (default ``eta = 1``, ancestral) or ``"ddim"`` (default ``eta = 0``).
        eta: overrides the sampler's default ``eta``; :meth:`step` / ``sample_loop`` may override again.
        beta_start, beta_end: linear-schedule endpoints for ``T = 1000`` (scaled by ``1000 / T``).
        cosine_s: offset of the cosine schedule.

    Attributes: ``betas``, ``alphas``, ``alphas_cumprod`` (float64, (T,)), ``timesteps`` (descending
    LongTensor of the visited steps; the full chain until :meth:`set_timesteps` is called) and
    ``eta`` (the default).
    """

    def __init__(self, num_train_timesteps: int = 1000, beta_schedule: str = "linear",
                 prediction_type: str = "epsilon", clip_sample: bool = True, clip_range: float = 1.0,
                 sampler: str = "ddpm", eta: float | None = None, beta_start: float = 1e-4,
                 beta_end: float = 0.02, cosine_s: float = 0.008) -> None:
        if int(num_train_timesteps) < 1:
            raise VoxdiffError(f"num_train_timesteps must be >= 1, got {num_train_timesteps}.")
        if prediction_type not in DDPM_PREDICTION_TYPES:
            raise VoxdiffError(f"DDPM prediction_type {prediction_type!r} is not supported: "
                               f"choose one of {', '.join(DDPM_PREDICTION_TYPES)}.")
        if sampler not in SAMPLERS:
            raise VoxdiffError(f"unknown sampler {sampler!r}: choose one of {', '.join(SAMPLERS)}.")
        if eta is not None and eta < 0:
            raise VoxdiffError(f"eta must be >= 0, got {eta}.")
        if clip_range <= 0:
            raise VoxdiffError(f"clip_range must be > 0, got {clip_range}.")
        self._config = dict(num_train_timesteps=int(num_train_timesteps), beta_schedule=beta_schedule,
                            prediction_type=prediction_type, clip_sample=bool(clip_sample),
                            clip_range=float(clip_range), sampler=sampler,
                            eta=None if eta is None else float(eta), beta_start=float(beta_start),
                            beta_end=float(beta_end), cosine_s=float(cosine_s))
        self.num_train_timesteps = int(num_train_timesteps)
        self.prediction_type = prediction_type
        self.clip_sample = bool(clip_sample)
        self.clip_range = float(clip_range)
        self.eta = SAMPLERS[sampler] if eta is None else float(eta)
        self.betas = make_betas(self.num_train_timesteps, beta_schedule, beta_start, beta_end, cosine_s)
        self.alphas = 1.0 - self.betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)
        self.set_timesteps(self.num_train_timesteps)

    # ----------------------------------------------------------------- schedule lookups
    def _abar64(self, t: torch.Tensor | int, batch: int) -> torch.Tensor:
        """``abar_t`` as float64 (B,); ``t = -1`` means clean (``abar = 1``)."""
        t = torch.as_tensor(t, dtype=torch.long).reshape(-1).cpu()
        if (t < -1).any() or (t >= self.num_train_timesteps).any():
            raise ValueError(f"timesteps must lie in -1..{self.num_train_timesteps - 1}, got {t.tolist()}")
        abar = torch.where(t >= 0, self.alphas_cumprod[t.clamp(min=0)], torch.ones((), dtype=torch.float64))
        return abar.expand(batch) if abar.numel() == 1 else abar

    def _coefs(self, t: torch.Tensor | int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``sqrt(abar_t)`` and ``sqrt(1 - abar_t)`` shaped to broadcast against ``like``.

        Computed in float64 and cast last: ``1 - abar`` near ``t = 0`` loses digits in float32.
        """
        abar = self._abar64(t, like.shape[0])
        return expand_to(abar.sqrt(), like), expand_to((1.0 - abar).sqrt(), like)

    def clip_x0(self, x0: torch.Tensor) -> torch.Tensor:
        """Clamp an ``x0`` estimate to ``[-clip_range, clip_range]`` when ``clip_sample`` is on."""
        return x0.clamp(-self.clip_range, self.clip_range) if self.clip_sample else x0

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

    # ----------------------------------------------------------------- sampling side
    def set_timesteps(self, num_inference_steps: int, start_step: int | None = None) -> None:
        """Visit ``num_inference_steps`` evenly spaced timesteps from ``start_step`` (default ``T-1``) to 0.

        The visited steps are ``round(linspace(start, 0, K))``, descending and distinct, so a
        sampler makes exactly ``K`` network calls; ``K == 1`` visits ``start`` only.
        """
        T = self.num_train_timesteps
        start = T - 1 if start_step is None else int(start_step)
        if not 0 <= start <= T - 1:
            raise VoxdiffError(f"start_step must lie in 0..{T - 1} for a {T}-step DDPM, got {start_step}.")
        k = int(num_inference_steps)
        if not 1 <= k <= start + 1:
            raise VoxdiffError(f"number of sampling steps must lie in 1..{start + 1} when starting at "
                               f"timestep {start}, got {num_inference_steps}.")
        steps = np.round(np.linspace(start, 0, k)).astype(np.int64) if k > 1 else np.array([start])
        # Spacing >= 1 keeps the rounded steps distinct; guard anyway since K is the call count.
        assert np.all(np.diff(steps) < 0), steps
        self.timesteps = torch.from_numpy(steps)

    def previous_timestep(self, t: int | torch.Tensor) -> torch.Tensor:
        """The next visited timestep below ``t`` (``-1`` = clean after the last), shape (B,) or (1,)."""
        t = torch.as_tensor(t, dtype=torch.long).reshape(-1).cpu()
        ascending = self.timesteps.flip(0)
        idx = torch.searchsorted(ascending, t, right=False) - 1
        return torch.where(idx >= 0, ascending[idx.clamp(min=0)], torch.full_like(t, -1))

    def initial_state(self, shape: tuple[int, ...], *, source: torch.Tensor | None = None,
                      start: torch.Tensor | None = None, generator: torch.Generator | None = None,
                      device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Pure noise at ``timesteps[0]``, or ``q(x_t' | x0 = start)`` at ``t' = timesteps[0]``.

        ``start`` (any ``x0`` guess, e.g. an encoded pre-segmentation) is broadcast to ``shape``.
        """
        template = torch.empty(tuple(shape), device=device, dtype=dtype)
        noise = randn_like(template, generator)
        if start is None:
            return noise
        try:
            x0 = torch.broadcast_to(start.to(device=device, dtype=dtype), tuple(shape))
        except RuntimeError as exc:
            raise ValueError(f"start of shape {tuple(start.shape)} does not broadcast to {tuple(shape)}") from exc
        return self.add_noise(x0, noise, self.timesteps[:1])

    def step(self, model_output: torch.Tensor, t: int | torch.Tensor, x_t: torch.Tensor,
             generator: torch.Generator | None = None, *, source: torch.Tensor | None = None,
             eta: float | None = None) -> StepOutput:
        """Generalized DDIM update from ``t`` to the next visited timestep (clean after the last).

        ``t`` is an int or a (B,) tensor; ``eta`` defaults to the constructor's. Noise is drawn
        (from ``generator``) only when ``eta > 0``.
        """
        eta = self.eta if eta is None else float(eta)
        if eta < 0:
            raise VoxdiffError(f"eta must be >= 0, got {eta}.")
        batch = x_t.shape[0]
        abar_t = self._abar64(t, batch)
        abar_prev = self._abar64(self.previous_timestep(t), batch)
        x0_hat = self.clip_x0(self.predict_x0(model_output, x_t, t))
        # sigma^2 is the DDPM posterior variance between t and prev (zero when prev is clean).
        var = (1.0 - abar_prev) / (1.0 - abar_t) * (1.0 - abar_t / abar_prev)
        sigma = eta * var.clamp(min=0).sqrt()
        direction = (1.0 - abar_prev - sigma ** 2).clamp(min=0).sqrt()
        # x_prev = sqrt(abar_prev) x0_hat + direction * eps_hat with eps_hat from (x_t, x0_hat), regrouped.
        c_x0 = abar_prev.sqrt() - direction * abar_t.sqrt() / (1.0 - abar_t).sqrt()
        c_xt = direction / (1.0 - abar_t).sqrt()
        prev_sample = expand_to(c_x0, x_t) * x0_hat + expand_to(c_xt, x_t) * x_t
        if eta > 0:
            prev_sample = prev_sample + expand_to(sigma, x_t) * randn_like(x_t, generator)
        return StepOutput(prev_sample=prev_sample, pred_x0=x0_hat)
