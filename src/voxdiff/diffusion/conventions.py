"""Conventions every noise process and sampler follows, checked in one place.

* **eta** (sampler stochasticity) lies in ``[0, 1]`` for every sampler: 0 is deterministic
  (DDIM / the bridge's DDIM-like walk), 1 the posterior of the process (ancestral DDPM / the
  BBDM posterior). Deterministic solvers (DPM-Solver++) accept only 0.
* **clip_sample** is one number or ``None``: samplers clamp their ``x0`` estimate to
  ``[-clip_sample, clip_sample]``; ``None`` means no clamp. The old DDPM form
  ``clip_sample: bool`` + ``clip_range: float`` (in checkpoints written before samplers were
  split from processes) is read as ``clip_range`` when true and ``None`` when false.
  ``predict_x0`` of a process never clips; only samplers do.
* **timesteps**: a sampler visits ``timesteps`` (descending LongTensor) and makes exactly one
  network call per visited timestep; ``start_step`` caps the first one (PD-DDPM's ``t'``).
  A DDPM visits ``K`` distinct steps of ``0 .. T-1`` and refuses ``K > start + 1``; the
  bridge visits steps of ``1 .. T`` (``t = 0`` is the clean target) and caps ``K`` at ``start``.
* **errors**: misuse a user can cause (bad ``steps``, ``eta``, ``start_step``, ``clip_sample``,
  an unknown or incompatible sampler, a ``start`` of the wrong shape) raises
  :class:`voxdiff.errors.VoxdiffError` with one sentence naming the option.
* **randomness**: every draw takes an optional ``torch.Generator``; a seed fixes the result.
"""

from __future__ import annotations

import torch

from voxdiff.errors import VoxdiffError


def check_eta(eta: float, who: str = "sampler") -> float:
    """``eta`` as a float in ``[0, 1]``, else VoxdiffError naming ``who``."""
    try:
        value = float(eta)
    except (TypeError, ValueError) as exc:
        raise VoxdiffError(f"{who} eta must be a number in [0, 1], got {eta!r}") from exc
    if not 0.0 <= value <= 1.0:
        raise VoxdiffError(f"{who} eta must lie in [0, 1], got {eta}")
    return value


def normalize_clip(clip_sample: bool | float | None, clip_range: float | None = None) -> float | None:
    """One clamp bound (or None) from the current form (float | None) or the old DDPM form (bool + clip_range)."""
    if clip_range is not None and (isinstance(clip_range, bool) or float(clip_range) <= 0):
        raise VoxdiffError(f"clip_range must be > 0, got {clip_range}")
    if clip_sample is None or clip_sample is False:
        return None
    if clip_sample is True:
        return 1.0 if clip_range is None else float(clip_range)
    try:
        bound = float(clip_sample)
    except (TypeError, ValueError) as exc:
        raise VoxdiffError(f"clip_sample must be a positive number or null, got {clip_sample!r}") from exc
    if bound <= 0:
        raise VoxdiffError(f"clip_sample must be a positive number or null, got {clip_sample}")
    return bound


def clip_x0(x0: torch.Tensor, bound: float | None) -> torch.Tensor:
    """Clamp an ``x0`` estimate to ``[-bound, bound]`` (no-op for ``None``)."""
    return x0 if bound is None else x0.clamp(-bound, bound)


def check_steps(num_inference_steps: int, low: int, high: int | None, context: str = "") -> int:
    """The number of sampling steps as an int in ``low .. high`` (no upper bound for ``None``)."""
    try:
        k = int(num_inference_steps)
    except (TypeError, ValueError) as exc:
        raise VoxdiffError(f"number of sampling steps must be an integer, got {num_inference_steps!r}") from exc
    if k != num_inference_steps or k < low or (high is not None and k > high):
        span = f"{low}..{high}" if high is not None else f">= {low}"
        raise VoxdiffError(f"number of sampling steps must be {'' if high is None else 'in '}{span}{context}, "
                           f"got {num_inference_steps}")
    return k


def check_start_step(start_step: int | None, low: int, high: int, what: str) -> int:
    """``start_step`` (default ``high``) as an int in ``low .. high``; ``what`` names the process."""
    if start_step is None:
        return high
    try:
        value = int(start_step)
    except (TypeError, ValueError) as exc:
        raise VoxdiffError(f"start_step must be an integer, got {start_step!r}") from exc
    if value != start_step or not low <= value <= high:
        raise VoxdiffError(f"start_step must lie in {low}..{high} for {what}, got {start_step}")
    return value


def scalar_timestep(t: int | torch.Tensor) -> int:
    """One timestep for the whole batch, from an int or a uniform tensor."""
    if isinstance(t, torch.Tensor):
        flat = t.reshape(-1)
        if flat.numel() == 0 or (flat != flat[0]).any():
            raise VoxdiffError(f"a sampler step takes one timestep for the whole batch, got {flat.tolist()}")
        return int(flat[0])
    return int(t)


def broadcast_start(start: torch.Tensor, shape: tuple[int, ...], device, dtype) -> torch.Tensor:
    """``start`` (an ``x0`` guess) broadcast to the sample ``shape``, else VoxdiffError."""
    try:
        return torch.broadcast_to(start.to(device=device, dtype=dtype), tuple(shape))
    except RuntimeError as exc:
        raise VoxdiffError(f"start of shape {tuple(start.shape)} does not broadcast to the sample shape "
                           f"{tuple(shape)}") from exc
