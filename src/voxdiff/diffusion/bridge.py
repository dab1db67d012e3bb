"""Direct bridge diffusion between a target ``x0`` and a source volume ``y`` (BBDM/PPDM style).

Forward marginal, for integer ``t`` in ``0 .. T``::

    x_t = (1 - m_t) x0 + m_t y + sigma_t eps,   sigma_t^2 = 2 s (m_t - m_t^2)

with ``m_0 = 0`` and ``m_T = 1``, so ``x_0 = x0`` and ``x_T = y`` exactly: sampling starts
from the source volume itself, not from noise. ``s`` (``noise_scale``) sets the bridge's
variance; ``s = 0`` makes the bridge a deterministic interpolation.

The reverse walk (deterministic or BBDM-posterior, ``eta`` in ``[0, 1]``) is the ``bridge``
sampler in :mod:`voxdiff.diffusion.samplers.bridge`; it reads :attr:`BridgeProcess.m`,
:attr:`~BridgeProcess.variance` and :meth:`~BridgeProcess.posterior_variance` from here.
"""

from __future__ import annotations

import math

import torch

from voxdiff.diffusion.base import NoiseProcess, expand_to
from voxdiff.diffusion.conventions import check_eta, normalize_clip
from voxdiff.errors import VoxdiffError

BRIDGE_SCHEDULES = ("linear", "sin", "cosine")
BRIDGE_PREDICTION_TYPES = ("x0", "residual", "epsilon")

# Below this the bridge noise is treated as zero (t = 0, t = T, or s = 0).
TINY_VAR = 1e-12
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
        clip_sample: default clamp bound of the sampler's ``x0`` estimate, or ``None`` (no clamp).
    """

    kind = "bridge"
    default_sampler = "bridge"

    def __init__(self, num_train_timesteps: int = 1000, schedule: str = "linear", noise_scale: float = 1.0,
                 prediction_type: str = "x0", eta: float = 0.0, clip_sample: float | None = None) -> None:
        if int(num_train_timesteps) < 1:
            raise VoxdiffError(f"num_train_timesteps must be >= 1, got {num_train_timesteps}")
        if prediction_type not in BRIDGE_PREDICTION_TYPES:
            raise VoxdiffError(f"bridge prediction_type must be one of {BRIDGE_PREDICTION_TYPES}, "
                               f"got {prediction_type!r}")
        if noise_scale < 0:
            raise VoxdiffError(f"bridge noise_scale must be >= 0, got {noise_scale}")
        self.num_train_timesteps = int(num_train_timesteps)
        self.schedule = schedule
        self.noise_scale = float(noise_scale)
        self.prediction_type = prediction_type
        self.eta = check_eta(eta, "bridge process")
        self.clip_sample = normalize_clip(clip_sample)
        self._config = dict(num_train_timesteps=self.num_train_timesteps, schedule=schedule,
                            noise_scale=self.noise_scale, prediction_type=prediction_type,
                            eta=self.eta, clip_sample=self.clip_sample)
        self.m = bridge_schedule(schedule, self.num_train_timesteps)
        self.variance = (2.0 * self.noise_scale * (self.m - self.m ** 2)).clamp_min(0.0)
        self.variance[0] = self.variance[-1] = 0.0
        self.sigma = self.variance.sqrt()

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
    def need_source(source: torch.Tensor | None, what: str) -> torch.Tensor:
        """``source`` (the bridge's ``y``), else VoxdiffError naming the caller ``what``."""
        if source is None:
            raise VoxdiffError(f"BridgeProcess.{what} needs the source volume y (source=...)")
        return source

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor,
                  source: torch.Tensor | None = None) -> torch.Tensor:
        """``x_t = (1 - m_t) x0 + m_t y + sigma_t noise`` with ``y = source``."""
        y = self.need_source(source, "add_noise")
        m = self._coef(self.m, t, x0)
        sigma = self._coef(self.sigma, t, x0)
        return (1.0 - m) * x0 + m * y + sigma * noise

    def training_target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor,
                        source: torch.Tensor | None = None) -> torch.Tensor:
        """``x0``, ``x0 - y`` or ``noise`` depending on ``prediction_type``."""
        if self.prediction_type == "x0":
            return x0
        if self.prediction_type == "residual":
            return x0 - self.need_source(source, "training_target")
        return noise

    def predict_x0(self, model_output: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor,
                   source: torch.Tensor | None = None) -> torch.Tensor:
        """Clean-target estimate from a network output (``source`` needed for residual/epsilon)."""
        if self.prediction_type == "x0":
            return model_output
        y = self.need_source(source, "predict_x0")
        if self.prediction_type == "residual":
            return model_output + y
        m = self._coef(self.m, t, x_t)
        sigma = self._coef(self.sigma, t, x_t)
        return (x_t - m * y - sigma * model_output) / (1.0 - m).clamp_min(_MIN_ONE_MINUS_M)

    def posterior_variance(self, t: int, s: int) -> float:
        """Variance of ``q(x_s | x_t, x0, y)`` for ``s < t`` (equals ``sigma_s^2`` at ``t = T``)."""
        var_t, var_s = float(self.variance[t]), float(self.variance[s])
        if var_s <= TINY_VAR:
            return 0.0
        if var_t <= TINY_VAR:
            # x_t carries no information beyond (x0, y): the posterior is the marginal at s.
            return var_s
        ratio = (1.0 - float(self.m[t])) / (1.0 - float(self.m[s]))
        var_ts = var_t - var_s * ratio ** 2
        return max(var_ts * var_s / var_t, 0.0)

    def sampler_defaults(self, name: str) -> dict:
        """The stored ``eta`` and ``clip_sample`` (the bridge has one sampler)."""
        return {"eta": self.eta, "clip_sample": self.clip_sample}
