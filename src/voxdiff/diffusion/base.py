"""The one noise-process contract every task uses, and the sampling loop built on it.

A *noise process* defines how clean data ``x0`` is corrupted into ``x_t`` during training
(:meth:`NoiseProcess.add_noise`), what the network regresses (:meth:`training_target`),
and how a sampler walks back (:meth:`set_timesteps`, :meth:`initial_state`, :meth:`step`).
It knows nothing about tasks, images or networks: a task closes over its conditioning in a
``model_fn(x_t, t) -> output`` and :func:`sample_loop` drives any process with it.

Conventions (shared by DDPM and the bridge):

* training timesteps are integers ``0 .. num_train_timesteps - 1`` (DDPM) or
  ``1 .. num_train_timesteps`` (bridge, where ``t = 0`` is the clean target);
* ``source`` is the volume a process starts from when it has one (the bridge's ``y``); for
  DDPM it is ignored;
* ``start`` / ``start_step`` let a sampler begin from a forward-diffused guess instead of
  the prior (PD-DDPM's pre-segmentation start);
* every random draw takes an optional ``torch.Generator`` so a seed fixes the result.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Callable

import torch

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
    """Abstract noise process: training corruption + reverse-time sampler.

    Attributes set by subclasses: ``num_train_timesteps``, ``prediction_type`` (one of
    :data:`PREDICTION_TYPES`) and, after :meth:`set_timesteps`, ``timesteps`` (a 1-D
    LongTensor, descending, the steps a sampler visits).
    """

    num_train_timesteps: int
    prediction_type: str
    timesteps: torch.Tensor

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
        """Convert a network output at ``(x_t, t)`` into an estimate of the clean ``x0``."""

    @abstractmethod
    def set_timesteps(self, num_inference_steps: int, start_step: int | None = None) -> None:
        """Choose the (descending) timesteps a sampler visits; ``start_step`` caps the first."""

    @abstractmethod
    def initial_state(self, shape: tuple[int, ...], *, source: torch.Tensor | None = None,
                      start: torch.Tensor | None = None, generator: torch.Generator | None = None,
                      device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The state at ``timesteps[0]``: the prior, or ``start`` forward-diffused to it."""

    @abstractmethod
    def step(self, model_output: torch.Tensor, t: int | torch.Tensor, x_t: torch.Tensor,
             generator: torch.Generator | None = None, *, source: torch.Tensor | None = None,
             eta: float | None = None) -> StepOutput:
        """One reverse step from ``t`` to the next visited timestep (or to 0 after the last)."""

    def config(self) -> dict:
        """Constructor arguments, so the process can be rebuilt from a checkpoint."""
        return dict(self._config)


ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@torch.no_grad()
def sample_loop(model_fn: ModelFn, process: NoiseProcess, shape: tuple[int, ...], *, steps: int,
                source: torch.Tensor | None = None, start: torch.Tensor | None = None,
                start_step: int | None = None, generator: torch.Generator | None = None,
                eta: float | None = None, device: torch.device | str = "cpu",
                dtype: torch.dtype = torch.float32, progress: Callable[[int, int], None] | None = None
                ) -> torch.Tensor:
    """Run the reverse process of ``process`` with ``model_fn(x_t, t_batch) -> output``.

    Task-agnostic: the task wraps its conditioning inside ``model_fn``. ``progress`` is called
    as ``progress(i, n)`` after each step (used for progress bars).
    """
    process.set_timesteps(steps, start_step=start_step)
    x = process.initial_state(shape, source=source, start=start, generator=generator,
                              device=device, dtype=dtype)
    n = len(process.timesteps)
    for i, t in enumerate(process.timesteps):
        t_batch = torch.full((shape[0],), int(t), device=x.device, dtype=torch.long)
        out = model_fn(x, t_batch)
        x = process.step(out, int(t), x, generator=generator, source=source, eta=eta).prev_sample
        if progress is not None:
            progress(i + 1, n)
    return x
