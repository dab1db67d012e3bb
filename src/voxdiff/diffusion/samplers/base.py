"""The sampler contract, and the timestep grid and start state shared by the DDPM samplers.

A sampler walks the reverse process of a :class:`~voxdiff.diffusion.base.NoiseProcess` of a
kind it declares in ``process_kinds``. Use: ``set_timesteps(K, start_step)``, then
``x = initial_state(shape, ...)``, then for each ``t`` in ``timesteps``:
``x = step(model_fn(x, t), t, x, generator, source=...).prev_sample``. Multistep samplers keep
their history between calls of ``step``; ``set_timesteps`` (or a step at ``timesteps[0]``)
resets it, so one sampler object may be reused for many chains, one chain at a time.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import numpy as np
import torch

from voxdiff.diffusion.base import NoiseProcess, StepOutput, randn_like
from voxdiff.diffusion.conventions import broadcast_start, check_start_step, check_steps
from voxdiff.errors import VoxdiffError


class Sampler(ABC):
    """Reverse-time sampler for one process.

    Options are keyword arguments (``option_names`` lists them); those not given are taken from
    ``process.sampler_defaults(name)`` (what the checkpoint stored), then from the sampler's own
    defaults. After construction ``timesteps`` is the full chain; :meth:`set_timesteps` respaces.
    """

    name: ClassVar[str]
    process_kinds: ClassVar[tuple[str, ...]]
    option_names: ClassVar[tuple[str, ...]] = ("eta", "clip_sample")
    timesteps: torch.Tensor

    def __init__(self, process: NoiseProcess, **options: Any) -> None:
        if process.kind not in self.process_kinds:
            raise VoxdiffError(f"sampler {self.name!r} does not serve a {process.kind!r} process "
                               f"(it serves {', '.join(self.process_kinds)})")
        unknown = sorted(set(options) - set(self.option_names))
        if unknown:
            raise VoxdiffError(f"sampler {self.name!r} has no option {', '.join(map(repr, unknown))} "
                               f"(options: {', '.join(self.option_names) or 'none'})")
        stored = {k: v for k, v in process.sampler_defaults(self.name).items() if k in self.option_names}
        self.process = process
        self.options = self.configure(**{**stored, **options})
        self.set_timesteps(process.num_train_timesteps)

    @abstractmethod
    def configure(self, **options: Any) -> dict[str, Any]:
        """Check and store the options; returns them resolved (for reports and :meth:`config`)."""

    @abstractmethod
    def set_timesteps(self, num_inference_steps: int, start_step: int | None = None) -> None:
        """Choose the (descending) timesteps to visit; ``start_step`` caps the first."""

    @abstractmethod
    def initial_state(self, shape: tuple[int, ...], *, source: torch.Tensor | None = None,
                      start: torch.Tensor | None = None, generator: torch.Generator | None = None,
                      device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The state at ``timesteps[0]``: the prior, or ``start`` forward-diffused to it."""

    @abstractmethod
    def step(self, model_output: torch.Tensor, t: int | torch.Tensor, x_t: torch.Tensor,
             generator: torch.Generator | None = None, *, source: torch.Tensor | None = None) -> StepOutput:
        """One reverse step from ``t`` to the next visited timestep (to the clean state after the last)."""

    def config(self) -> dict[str, Any]:
        """``{"name": ..., **options}``: enough to rebuild it with ``build_sampler``."""
        return {"name": self.name, **self.options}


class DDPMGridSampler(Sampler):
    """Shared by the DDPM samplers: the respaced grid over ``0 .. T-1`` and the (PD-DDPM) start state."""

    process_kinds = ("ddpm",)

    def set_timesteps(self, num_inference_steps: int, start_step: int | None = None) -> None:
        """Visit ``num_inference_steps`` evenly spaced timesteps from ``start_step`` (default ``T-1``) to 0.

        The visited steps are ``round(linspace(start, 0, K))``, descending and distinct, so a
        sampler makes exactly ``K`` network calls; ``K == 1`` visits ``start`` only.
        """
        T = self.process.num_train_timesteps
        start = check_start_step(start_step, 0, T - 1, f"a {T}-step DDPM")
        k = check_steps(num_inference_steps, 1, start + 1, f" when starting at timestep {start}")
        steps = np.round(np.linspace(start, 0, k)).astype(np.int64) if k > 1 else np.array([start])
        # Spacing >= 1 keeps the rounded steps distinct; guard anyway since K is the call count.
        assert np.all(np.diff(steps) < 0), steps
        self.timesteps = torch.from_numpy(steps)
        self.reset()

    def reset(self) -> None:
        """Forget any multistep history (nothing to forget for one-step samplers)."""

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

        ``start`` (any ``x0`` guess, e.g. an encoded pre-segmentation) is broadcast to ``shape``;
        ``source`` is ignored.
        """
        template = torch.empty(tuple(shape), device=device, dtype=dtype)
        noise = randn_like(template, generator)
        if start is None:
            return noise
        x0 = broadcast_start(start, shape, device, dtype)
        return self.process.add_noise(x0, noise, self.timesteps[:1])
