"""A task = a noise process + a backbone + its data roles.

The trainer, the CLI and the benchmarks only see this interface; they never branch on the
task. ``forward(batch, generator)`` returns the training loss (so DDP can wrap the task),
``predict(inputs, ...)`` runs the task's sampler on whole, normalised volumes.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any, ClassVar, Sequence

import torch
from torch import nn

Generators = torch.Generator | Sequence[torch.Generator] | None


def randn(shape: Sequence[int], generator: Generators, device, dtype=torch.float32) -> torch.Tensor:
    """Standard normal noise; with a list of generators, sample ``i`` uses ``generator[i]``.

    Per-sample generators make a sample's noise independent of how the global batch is split
    across processes, so 1-process and N-process training see the same random numbers.
    """
    if generator is None or isinstance(generator, torch.Generator):
        return torch.randn(tuple(shape), generator=generator, dtype=dtype).to(device)
    return torch.stack([torch.randn(tuple(shape[1:]), generator=g, dtype=dtype) for g in generator]).to(device)


def randint(high: int, batch: int, generator: Generators, device, low: int = 0) -> torch.Tensor:
    """Uniform integers in ``[low, high)`` (B,), per-sample generators as in :func:`randn`."""
    if generator is None or isinstance(generator, torch.Generator):
        return torch.randint(low, high, (batch,), generator=generator).to(device)
    return torch.cat([torch.randint(low, high, (1,), generator=g) for g in generator]).to(device)


def draw_timesteps(process, batch: int, generator: Generators, device) -> torch.Tensor:
    """Training timesteps from the process's own range, per-sample generators as in :func:`randn`."""
    if generator is None or isinstance(generator, torch.Generator):
        return process.sample_timesteps(batch, device=device, generator=generator)
    return torch.cat([process.sample_timesteps(1, device="cpu", generator=g) for g in generator]).to(device)


class Task(nn.Module):
    """Base class of every task.

    Subclasses set ``name`` and ``roles`` (the batch keys they train on, e.g. ``("source",
    "target")``), ``input_roles`` (what inference needs) and ``output_role`` (whose intensity
    units the prediction is written in), build ``self.process`` and ``self.net`` from the
    ``model`` section of the config, and implement :meth:`forward` and :meth:`predict`.
    """

    name: ClassVar[str]
    roles: ClassVar[tuple[str, ...]]
    input_roles: ClassVar[tuple[str, ...]]
    output_role: ClassVar[str]
    label_roles: ClassVar[tuple[str, ...]] = ()

    def __init__(self, model_cfg: dict) -> None:
        super().__init__()
        self.model_cfg = dict(model_cfg)

    @property
    def required_multiple(self) -> int:
        """Spatial sizes the network accepts must be multiples of this."""
        m = getattr(self.net, "required_multiple", 1)
        # Factors are powers of two, so the largest per-axis multiple serves every axis.
        return int(max(m)) if isinstance(m, (tuple, list)) else int(m)

    @abstractmethod
    def forward(self, batch: dict[str, torch.Tensor], generator: Generators = None) -> tuple[torch.Tensor, dict[str, float]]:
        """Training loss for a batch of normalised crops, and scalars to log."""

    @abstractmethod
    def predict(self, inputs: dict[str, torch.Tensor], *, steps: int, generator: torch.Generator | None = None,
                **kwargs: Any) -> dict[str, torch.Tensor]:
        """Run inference on normalised inputs (B, C, X, Y, Z) whose size fits ``required_multiple``."""

    def validation_metrics(self, pred: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]) -> dict[str, float]:
        """Metrics of one validation volume in normalised units (override per task)."""
        return {}
