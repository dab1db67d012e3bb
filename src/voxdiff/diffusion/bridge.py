"""Direct bridge diffusion between a target ``x0`` and a source volume ``y`` (BBDM/PPDM style).

Forward marginal, for integer ``t`` in ``0 .. T``::

    x_t = (1 - m_t) x0 + m_t y + sigma_t eps,   sigma_t^2 = 2 s (m_t - m_t^2)

with ``m_0 = 0`` and ``m_T = 1``, so ``x_0 = x0`` and ``x_T = y`` exactly: sampling starts
from the source volume itself, not from noise. ``s`` (``noise_scale``) sets the bridge's
variance; ``s = 0`` makes the bridge a deterministic interpolation.

Reverse step from ``t`` to ``s < t`` given an estimate ``x0_hat`` (``eps_hat`` is the noise
implied by ``x_t`` and ``x0_hat``)::

    x_s = (1 - m_s) x0_hat + m_s y + sqrt(sigma_s^2 - c^2) eps_hat + c z,   c^2 = eta^2 v_{s|t}

where ``v_{s|t}`` is the variance of the bridge posterior ``q(x_s | x_t, x0)``. ``eta = 0`` is
the deterministic DDIM-like sampler, ``eta = 1`` the BBDM posterior sampler.
"""

from __future__ import annotations

import math

import torch

from voxdiff.diffusion.base import NoiseProcess, StepOutput, expand_to, randn_like
from voxdiff.errors import VoxdiffError

BRIDGE_SCHEDULES = ("linear", "sin", "cosine")
BRIDGE_PREDICTION_TYPES = ("x0", "residual", "epsilon")

# Below this the bridge noise is treated as zero (t = 0, t = T, or s = 0).
_TINY_VAR = 1e-12
# 1 - m_t is clamped here when recovering x0 from an epsilon prediction (ill-posed at t = T).
_MIN_ONE_MINUS_M = 1e-4


def bridge_schedule(name: str, num_train_timesteps: int) -> torch.Tensor:
    """``m_t`` for ``t = 0 .. T`` (float64, length T+1), exactly 0 at t=0 and 1 at t=T.

    ``"linear"``: ``t/T``; ``"sin"``: ``sin(pi/2 * t/T)`` (moves away from the target fast);
    ``"cosine"``: ``(1 - cos(pi t/T)) / 2`` (slow at both ends).
    """
    s = torch.arange(num_train_timesteps + 1, dtype=torch.float64) / num_train_timesteps
    if name == "linear":
        m = s
    elif name == "sin":
        m = torch.sin(0.5 * math.pi * s)
    elif name == "cosine":
        m = 0.5 * (1.0 - torch.cos(math.pi * s))
    else:
        raise VoxdiffError(f"unknown bridge schedule {name!r}; choose one of {BRIDGE_SCHEDULES}")
    m[0], m[-1] = 0.0, 1.0
    return m


class BridgeProcess(NoiseProcess):
    """Direct bridge ``x0 <-> y`` with ``x_T = y``; see the module docstring for the maths.

    Args:
        num_train_timesteps: ``T``; training draws ``t`` in ``1 .. T``.
        schedule: ``m_t`` schedule, one of :data:`BRIDGE_SCHEDULES`.
        noise_scale: ``s`` in ``sigma_t^2 = 2 s (m_t - m_t^2)`` (peak variance ``s/2``); 0 = no noise.
        prediction_type: what the network outputs: ``"x0"``, ``"residual"`` (``x0 - y``) or
            ``"epsilon"`` (the bridge noise; x0 cannot be recovered at ``t = T`` where the
            bridge is noise-free and equals ``y``, so prefer ``x0``/``residual``).
        eta: default sampler stochasticity in ``[0, 1]`` (0 = deterministic).
        clip_sample: if set, ``x0`` estimates are clamped to ``[-clip_sample, clip_sample]`` while sampling.
    """

    def __init__(self, num_train_timesteps: int = 1000, schedule: str = "linear", noise_scale: float = 1.0,
                 prediction_type: str = "x0", eta: float = 0.0, clip_sample: float | None = None) -> None:
        if int(num_train_timesteps) < 1:
            raise VoxdiffError(f"num_train_timesteps must be >= 1, got {num_train_timesteps}")
        if prediction_type not in BRIDGE_PREDICTION_TYPES:
            raise VoxdiffError(f"bridge prediction_type must be one of {BRIDGE_PREDICTION_TYPES}, "
                               f"got {prediction_type!r}")
        if noise_scale < 0:
            raise VoxdiffError(f"bridge noise_scale must be >= 0, got {noise_scale}")
        _check_eta(eta)
        if clip_sample is not None and clip_sample <= 0:
            raise VoxdiffError(f"clip_sample must be positive or None, got {clip_sample}")
        self.num_train_timesteps = int(num_train_timesteps)
        self.schedule = schedule
        self.noise_scale = float(noise_scale)
        self.prediction_type = prediction_type
        self.eta = float(eta)
        self.clip_sample = None if clip_sample is None else float(clip_sample)
        self._config = dict(num_train_timesteps=self.num_train_timesteps, schedule=schedule,
                            noise_scale=self.noise_scale, prediction_type=prediction_type,
                            eta=self.eta, clip_sample=self.clip_sample)
        self.m = bridge_schedule(schedule, self.num_train_timesteps)
        self.variance = (2.0 * self.noise_scale * (self.m - self.m ** 2)).clamp_min(0.0)
        self.variance[0] = self.variance[-1] = 0.0
        self.sigma = self.variance.sqrt()
        self.set_timesteps(self.num_train_timesteps)

    # ----- training -------------------------------------------------------------------------
    def sample_timesteps(self, batch: int, device: torch.device | str = "cpu",
                         generator: torch.Generator | None = None) -> torch.Tensor:
        """Uniform integer timesteps in ``1 .. T`` (B,)."""
        gen_device = generator.device if generator is not None else device
        t = torch.randint(1, self.num_train_timesteps + 1, (batch,), generator=generator, device=gen_device)
        return t.to(device)

    def _coef(self, table: torch.Tensor, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(t).long().reshape(-1).cpu()
        if (t < 0).any() or (t > self.num_train_timesteps).any():
            raise VoxdiffError(f"bridge timesteps must lie in 0..{self.num_train_timesteps}, got {t.tolist()}")
        return expand_to(table[t], x)

    @staticmethod
    def _need_source(source: torch.Tensor | None, what: str) -> torch.Tensor:
        if source is None:
            raise VoxdiffError(f"BridgeProcess.{what} needs the source volume y (source=...)")
        return source

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor,
                  source: torch.Tensor | None = None) -> torch.Tensor:
        """``x_t = (1 - m_t) x0 + m_t y + sigma_t noise`` with ``y = source``."""
        y = self._need_source(source, "add_noise")
        m = self._coef(self.m, t, x0)
        sigma = self._coef(self.sigma, t, x0)
        return (1.0 - m) * x0 + m * y + sigma * noise

    def training_target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor,
                        source: torch.Tensor | None = None) -> torch.Tensor:
        """``x0``, ``x0 - y`` or ``noise`` depending on ``prediction_type``."""
        if self.prediction_type == "x0":
            return x0
        if self.prediction_type == "residual":
            return x0 - self._need_source(source, "training_target")
        return noise

    def predict_x0(self, model_output: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor,
                   source: torch.Tensor | None = None) -> torch.Tensor:
        """Clean-target estimate from a network output (``source`` needed for residual/epsilon)."""
        if self.prediction_type == "x0":
            return model_output
        y = self._need_source(source, "predict_x0")
        if self.prediction_type == "residual":
            return model_output + y
        m = self._coef(self.m, t, x_t)
        sigma = self._coef(self.sigma, t, x_t)
        return (x_t - m * y - sigma * model_output) / (1.0 - m).clamp_min(_MIN_ONE_MINUS_M)

    # ----- sampling -------------------------------------------------------------------------
    def set_timesteps(self, num_inference_steps: int, start_step: int | None = None) -> None:
        """Evenly spaced descending steps from ``start_step`` (default T); the last step lands on 0.

        With ``k`` steps from ``T`` the visited timesteps are ``round(linspace(T, 0, k+1))[:-1]``;
        more steps than timesteps are capped.
        """
        top = self.num_train_timesteps if start_step is None else int(start_step)
        if not 1 <= top <= self.num_train_timesteps:
            raise VoxdiffError(f"bridge start_step must lie in 1..{self.num_train_timesteps}, got {start_step}")
        if int(num_inference_steps) < 1:
            raise VoxdiffError(f"number of sampling steps must be >= 1, got {num_inference_steps}")
        k = min(int(num_inference_steps), top)
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
        y = self._need_source(source, "initial_state")
        if tuple(y.shape) != tuple(shape):
            raise VoxdiffError(f"bridge source shape {tuple(y.shape)} does not match the sample shape {tuple(shape)}")
        y = y.to(device=device, dtype=dtype)
        t0 = int(self.timesteps[0])
        if start is None or t0 == self.num_train_timesteps:
            return y.clone()
        start = start.to(device=device, dtype=dtype)
        t = torch.full((shape[0],), t0, dtype=torch.long)
        return self.add_noise(start, randn_like(start, generator), t, source=y)

    def posterior_variance(self, t: int, s: int) -> float:
        """Variance of ``q(x_s | x_t, x0, y)`` for ``s < t`` (equals ``sigma_s^2`` at ``t = T``)."""
        var_t, var_s = float(self.variance[t]), float(self.variance[s])
        if var_s <= _TINY_VAR:
            return 0.0
        if var_t <= _TINY_VAR:
            # x_t carries no information beyond (x0, y): the posterior is the marginal at s.
            return var_s
        ratio = (1.0 - float(self.m[t])) / (1.0 - float(self.m[s]))
        var_ts = var_t - var_s * ratio ** 2
        return max(var_ts * var_s / var_t, 0.0)

    def step(self, model_output: torch.Tensor, t: int | torch.Tensor, x_t: torch.Tensor,
             generator: torch.Generator | None = None, *, source: torch.Tensor | None = None,
             eta: float | None = None) -> StepOutput:
        """One reverse step ``t -> s`` (next visited timestep, 0 after the last); ``eta`` overrides the default."""
        y = self._need_source(source, "step")
        t = _scalar_timestep(t)
        s = self._prev_timestep(t)
        eta = self.eta if eta is None else float(eta)
        _check_eta(eta)
        t_vec = torch.full((x_t.shape[0],), t, dtype=torch.long)
        x0_hat = self.predict_x0(model_output, x_t, t_vec, source=y)
        if self.clip_sample is not None:
            x0_hat = x0_hat.clamp(-self.clip_sample, self.clip_sample)
        m_t, m_s = float(self.m[t]), float(self.m[s])
        sig_t, var_s = float(self.sigma[t]), float(self.variance[s])
        mean = (1.0 - m_s) * x0_hat + m_s * y
        if var_s <= _TINY_VAR:
            return StepOutput(prev_sample=mean, pred_x0=x0_hat)
        c2 = eta ** 2 * self.posterior_variance(t, s)
        if sig_t > math.sqrt(_TINY_VAR):
            eps_hat = (x_t - (1.0 - m_t) * x0_hat - m_t * y) / sig_t
            mean = mean + math.sqrt(max(var_s - c2, 0.0)) * eps_hat
        if c2 > 0:
            mean = mean + math.sqrt(c2) * randn_like(x_t, generator)
        return StepOutput(prev_sample=mean, pred_x0=x0_hat)


def _check_eta(eta: float) -> None:
    if not 0.0 <= float(eta) <= 1.0:
        raise VoxdiffError(f"sampler eta must lie in [0, 1], got {eta}")


def _scalar_timestep(t: int | torch.Tensor) -> int:
    if isinstance(t, torch.Tensor):
        flat = t.reshape(-1)
        if flat.numel() == 0 or (flat != flat[0]).any():
            raise VoxdiffError(f"bridge step expects one timestep for the whole batch, got {flat.tolist()}")
        return int(flat[0])
    return int(t)
