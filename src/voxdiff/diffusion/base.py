"""The noise-process contract, the step result, and the sampling loop that joins a process to a sampler.

A *noise process* defines how clean data ``x0`` is corrupted into ``x_t`` during training
(:meth:`NoiseProcess.add_noise`), what the network regresses (:meth:`training_target`) and how
a network output maps back to ``x0`` (:meth:`predict_x0`), plus the schedule lookups samplers
read. A *sampler* (``voxdiff.diffusion.samplers``) walks the reverse process of one process
kind; it is chosen at inference, so one trained model can be sampled with DDPM, DDIM or
DPM-Solver++. A task closes over its conditioning in a ``model_fn(x_t, t) -> output`` and
:func:`sample_loop` drives any (process, sampler) pair with it.

Conventions (eta, clipping, timesteps, errors) are in :mod:`voxdiff.diffusion.conventions`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import torch

if TYPE_CHECKING:
    from voxdiff.diffusion.samplers.base import Sampler

PREDICTION_TYPES = ("x0", "epsilon", "residual", "v")


@dataclass
class StepOutput:
    """Result of one reverse step: the next state and the current clean-data estimate."""

    prev_sample: torch.Tensor
    pred_x0: torch.Tensor


def randn_like(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Gaussian noise shaped like ``x``, drawn from ``generator`` (on the generator's device)."""
    if generator is None:
        return torch.randn_like(x)
    noise = torch.randn(x.shape, generator=generator, device=generator.device, dtype=x.dtype)
    return noise.to(x.device)


def expand_to(values: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Reshape a per-sample vector (B,) to broadcast against ``x`` (B, C, D, H, W)."""
    return values.to(device=x.device, dtype=x.dtype).reshape(-1, *([1] * (x.ndim - 1)))


class NoiseProcess(ABC):
    """Abstract noise process: forward marginals, training targets and ``x0`` recovery.

    Attributes set by subclasses: ``kind`` (the registry name samplers declare they serve),
    ``num_train_timesteps``, ``prediction_type`` (one of :data:`PREDICTION_TYPES`) and
    ``default_sampler`` (the sampler name a checkpoint samples with when none is asked for).
    """

    kind: str
    num_train_timesteps: int
    prediction_type: str
    default_sampler: str

    @abstractmethod
    def sample_timesteps(self, batch: int, device: torch.device | str = "cpu",
                         generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw training timesteps (B,) uniformly from the process's training range."""

    @abstractmethod
    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor,
                  source: torch.Tensor | None = None) -> torch.Tensor:
        """Sample ``x_t ~ q(x_t | x0[, source])`` using the given standard-normal ``noise``."""

    @abstractmethod
    def training_target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor,
                        source: torch.Tensor | None = None) -> torch.Tensor:
        """The tensor the network is trained to output for this ``prediction_type``."""

    @abstractmethod
    def predict_x0(self, model_output: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor,
                   source: torch.Tensor | None = None) -> torch.Tensor:
        """Convert a network output at ``(x_t, t)`` into an (unclipped) estimate of the clean ``x0``."""

    @abstractmethod
    def sampler_defaults(self, name: str) -> dict[str, Any]:
        """Options stored with the model for sampler ``name`` (e.g. the checkpoint's ``eta``, ``clip_sample``)."""

    def config(self) -> dict:
        """Constructor arguments, so the process can be rebuilt from a checkpoint."""
        return dict(self._config)


ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@torch.no_grad()
def sample_loop(model_fn: ModelFn, process: NoiseProcess, shape: tuple[int, ...], *, steps: int,
                sampler: str | Sampler | None = None, sampler_options: dict[str, Any] | None = None,
                source: torch.Tensor | None = None, start: torch.Tensor | None = None,
                start_step: int | None = None, generator: torch.Generator | None = None,
                eta: float | None = None, device: torch.device | str = "cpu",
                dtype: torch.dtype = torch.float32, progress: Callable[[int, int], None] | None = None
                ) -> torch.Tensor:
    """Run the reverse process of ``process`` with ``model_fn(x_t, t_batch) -> output``.

    ``sampler`` is a registered name (``None``: the process's / checkpoint's default) or a
    built :class:`~voxdiff.diffusion.samplers.base.Sampler`; ``sampler_options`` and ``eta``
    (kept for pre-sampler callers; it overrides ``sampler_options["eta"]``) configure a
    sampler built here. Task-agnostic: the task wraps its conditioning inside ``model_fn``.
    ``progress`` is called as ``progress(i, n)`` after each step (used for progress bars).
    """
    from voxdiff.diffusion.samplers import resolve_sampler

    solver = resolve_sampler(sampler, process, sampler_options, eta=eta)
    solver.set_timesteps(steps, start_step=start_step)
    x = solver.initial_state(shape, source=source, start=start, generator=generator, device=device, dtype=dtype)
    n = len(solver.timesteps)
    for i, t in enumerate(solver.timesteps):
        t_batch = torch.full((shape[0],), int(t), device=x.device, dtype=torch.long)
        out = model_fn(x, t_batch)
        x = solver.step(out, int(t), x, generator=generator, source=source).prev_sample
        if progress is not None:
            progress(i + 1, n)
    return x
