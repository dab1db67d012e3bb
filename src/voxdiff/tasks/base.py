"""A task = a noise process + a backbone + its data roles.

The trainer, the CLI and the benchmarks only see this interface; they never branch on the
task. ``forward(batch, generator)`` returns the training loss (so DDP can wrap the task),
``predict(inputs, ...)`` runs the task's sampler on whole, normalised volumes.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from voxdiff.errors import VoxdiffError
from voxdiff.tasks.conditions import ScalarConditions

Generators = torch.Generator | Sequence[torch.Generator] | None

#: How a named prediction becomes a volume: ``intensity`` (in the output role's units),
#: ``spread`` (a standard deviation in those units: scaled by the slope only), ``labels``
#: (integer map), ``probabilities`` (one channel per class, written as a 4D X,Y,Z,K volume)
#: and ``map`` (a unitless float map such as an entropy).
OUTPUT_KINDS = ("intensity", "spread", "labels", "probabilities", "map")


@dataclass(frozen=True)
class OutputSpec:
    """One named output of a task's inference: its kind and what it needs."""

    kind: str
    description: str
    min_samples: int = 1

    def __post_init__(self) -> None:
        if self.kind not in OUTPUT_KINDS:
            raise ValueError(f"output kind must be one of {OUTPUT_KINDS}, got {self.kind!r}")


@dataclass
class Schedule:
    """What a task's sampler runs for one prediction, resolved from the user's options and the checkpoint."""

    steps: int
    samples: int = 1
    eta: float | None = None
    sampler: str | None = None
    start_step: int | None = None
    mode: str | None = None

    @property
    def nfe(self) -> int:
        """Network evaluations per input volume (steps x samples; one pass for a single-step model)."""
        return max(self.steps, 1) * self.samples

    def info(self) -> dict[str, Any]:
        """The schedule as a plain dict (reported by pipelines and the CLI)."""
        return {"mode": self.mode, "start_step": self.start_step, "steps": self.steps, "samples": self.samples,
                "nfe": self.nfe, "eta": self.eta, "sampler": self.sampler}


def check_count(name: str, value: Any, low: int, high: int | None = None) -> int:
    """An integer option within ``low..high`` (the one range check of ``--steps``, ``--samples``...)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise VoxdiffError(f"{name} must be an integer, got {value!r}")
    value = int(value)
    if value < low or (high is not None and value > high):
        rng = f"{low}..{high}" if high is not None else f">= {low}"
        raise VoxdiffError(f"{name} must lie in {rng}, got {value}" if high is not None else f"{name} must be {rng}, got {value}")
    return value


def randn(shape: Sequence[int], generator: Generators, device, dtype=torch.float32) -> torch.Tensor:
    """Standard normal noise; with a list of generators, sample ``i`` uses ``generator[i]``.

    Per-sample generators make a sample's noise independent of how the global batch is split
    across processes, so 1-process and N-process training see the same random numbers.
    """
    if generator is None or isinstance(generator, torch.Generator):
        return torch.randn(tuple(shape), generator=generator, dtype=dtype).to(device)
    return torch.stack([torch.randn(tuple(shape[1:]), generator=g, dtype=dtype) for g in generator]).to(device)


def focus_timesteps(t: torch.Tensor, num_train_timesteps: int, focus_max: int, fraction: float,
                    generator: Generators) -> torch.Tensor:
    """Move a share ``fraction`` of training timesteps (B,) into ``0..focus_max``, uniformly.

    A model that is only ever sampled from ``t' <= focus_max`` (PD-DDPM) then spends most of its
    training there, while the rest of the chain still sees some samples (vanilla sampling).
    Per-sample generators as in :func:`randn`.
    """
    if generator is None or isinstance(generator, torch.Generator):
        u = torch.rand((t.shape[0],), generator=generator)
    else:
        u = torch.cat([torch.rand((1,), generator=g) for g in generator])
    focused = (t.cpu() * (int(focus_max) + 1)) // int(num_train_timesteps)
    return torch.where(u < float(fraction), focused, t.cpu()).to(t.device)


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

    The **inference contract** (what a pipeline needs to serve the task without knowing it):
    ``entry_point`` (the named CLI command that documents it: ``translate``, ``segment`` or
    ``sample``), ``outputs`` (name -> :class:`OutputSpec`), ``primary_output``, optionally a
    ``start_role`` (an input that seeds the sampler, e.g. PD-DDPM's pre-segmentation) with the
    task that can produce it (``start_task``), :meth:`schedule` (the user's options resolved
    against the checkpoint's ``inference`` section), :meth:`encode_start` and :meth:`finalize`.
    """

    name: ClassVar[str]
    roles: ClassVar[tuple[str, ...]]
    input_roles: ClassVar[tuple[str, ...]]
    output_role: ClassVar[str]
    label_roles: ClassVar[tuple[str, ...]] = ()
    entry_point: ClassVar[str] = "translate"
    outputs: ClassVar[Mapping[str, OutputSpec]] = {
        "output": OutputSpec("intensity", "the prediction in the target's units"),
        "std": OutputSpec("spread", "voxel-wise standard deviation over the samples", min_samples=2),
    }
    primary_output: ClassVar[str] = "output"
    start_role: ClassVar[str | None] = None
    start_task: ClassVar[str | None] = None
    #: The ``model`` config section's schema (:mod:`voxdiff.config.schema`): configs and checkpoints
    #: of this task are validated against it.
    model_schema: ClassVar[Any] = None

    def __init__(self, model_cfg: dict) -> None:
        super().__init__()
        self.model_cfg = dict(model_cfg)
        #: Scalar conditions the network takes beside its images (none unless a task builds them).
        self.conditions = ScalarConditions({})

    def condition_vector(self, given: Mapping[str, Any] | None) -> torch.Tensor | None:
        """User-given scalar conditions validated against the model's (None: none given / none taken)."""
        return self.conditions.vector(given, model=f"this {self.name} model")

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

    # -- inference contract ----------------------------------------------------------------
    @property
    def num_train_timesteps(self) -> int:
        """``T`` of the task's noise process (0 for a task without one)."""
        process = getattr(self, "process", None)
        return int(getattr(process, "num_train_timesteps", 0) or 0)

    def schedule(self, inference_cfg: Mapping[str, Any], *, steps: int | None = None, samples: int = 1,
                 eta: float | None = None, sampler: str | None = None, start_step: int | None = None,
                 mode: str | None = None) -> Schedule:
        """Resolve sampling options against the checkpoint's ``inference`` section; refuse what does not apply.

        The default serves a process sampled from its prior or source: ``steps`` default to
        ``inference.steps`` and lie in ``1..T``; ``eta`` defaults to ``inference.eta``.
        """
        if start_step is not None:
            raise VoxdiffError(f"--start-step applies to a model that starts from a pre-segmentation, not to "
                               f"a '{self.name}' model")
        if mode is not None:
            raise VoxdiffError(f"--mode applies to a segmentation model, not to a '{self.name}' model")
        n_t = self.num_train_timesteps
        k = int(inference_cfg.get("steps", 10)) if steps is None else steps
        k = check_count("--steps", k, 1, n_t or None)
        samples = check_count("--samples", samples, 1)
        name, eta_v = self.sampler_choice(inference_cfg, sampler, eta)
        return Schedule(steps=k, samples=samples, eta=eta_v, sampler=name)

    def sampler_choice(self, inference_cfg: Mapping[str, Any], sampler: str | None,
                       eta: float | None) -> tuple[str | None, float | None]:
        """The sampler's name and ``eta``: the user's, else the checkpoint's.

        The checkpoint's ``inference.eta`` belongs to its own sampler: another sampler chosen at
        inference starts from its own default (e.g. deterministic DPM-Solver++), not from it.
        """
        process = getattr(self, "process", None)
        default = inference_cfg.get("sampler") or getattr(process, "default_sampler", None)
        name = default if sampler is None else sampler
        if name is not None and process is not None:
            from voxdiff.diffusion.samplers import check_sampler_name

            check_sampler_name(name, process.kind)
        if eta is not None:
            return name, float(eta)
        return name, (inference_cfg.get("eta") if name == default else None)

    def encode_start(self, labels: torch.Tensor) -> torch.Tensor:
        """A start volume (B, 1, X, Y, Z) as diffusion data (tasks with a ``start_role``)."""
        raise VoxdiffError(f"a '{self.name}' model takes no start volume")

    def finalize(self, out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Post-process whole-volume outputs (after window blending and cropping); identity by default."""
        return out
