"""Samplers, chosen at inference and swappable on a trained model: one registry, name -> class.

=============== ========== ================================================ =========================
name            processes  what                                             options
=============== ========== ================================================ =========================
``ddpm``        ddpm       ancestral DDPM (generalized DDIM at eta = 1)     eta, clip_sample
``ddim``        ddpm       DDIM, eta in [0, 1] (default 0: deterministic)   eta, clip_sample
``dpmsolver++`` ddpm       DPM-Solver++(2M), multistep, deterministic       clip_sample, spacing,
                                                                            lower_order_final, eta (0)
``bridge``      bridge     bridge walk y -> x0, eta in [0, 1]               eta, clip_sample
=============== ========== ================================================ =========================

``build_sampler(None, process)`` builds the process's default sampler with the options its
checkpoint stored (``model.process.sampler`` / ``eta`` / ``clip_sample``), so old checkpoints
sample exactly as before. Options not given fall back to what the process stored, then to
the sampler's defaults (see :mod:`voxdiff.diffusion.conventions`).
"""

from __future__ import annotations

from typing import Any

from voxdiff.diffusion.base import NoiseProcess
from voxdiff.diffusion.samplers.base import DDPMGridSampler, Sampler
from voxdiff.diffusion.samplers.bridge import BridgeSampler
from voxdiff.diffusion.samplers.ddim import DDIMSampler
from voxdiff.diffusion.samplers.ddpm_ancestral import DDPMAncestralSampler
from voxdiff.diffusion.samplers.dpm_solver import DPMSolverPlusPlus2MSampler
from voxdiff.errors import VoxdiffError

SAMPLERS: dict[str, type[Sampler]] = {cls.name: cls for cls in (
    DDPMAncestralSampler, DDIMSampler, DPMSolverPlusPlus2MSampler, BridgeSampler)}


def sampler_names(kind: str) -> list[str]:
    """Registered sampler names that serve a process of ``kind`` (``"ddpm"``, ``"bridge"``)."""
    return [name for name, cls in SAMPLERS.items() if kind in cls.process_kinds]


def check_sampler_name(name: str, kind: str) -> None:
    """VoxdiffError unless ``name`` is a registered sampler serving ``kind``, naming the valid ones."""
    if name not in SAMPLERS or kind not in SAMPLERS[name].process_kinds:
        what = "unknown sampler" if name not in SAMPLERS else "sampler"
        tail = "" if name not in SAMPLERS else f" does not serve a {kind!r} process"
        raise VoxdiffError(f"{what} {name!r}{tail}: for a {kind!r} process choose one of "
                           f"{', '.join(sampler_names(kind))}")


def build_sampler(name: str | None, process: NoiseProcess, **options: Any) -> Sampler:
    """The sampler ``name`` (None: the process's default) for ``process``, with ``options``.

    ``options`` whose value is None are dropped (the stored or built-in default applies),
    except ``clip_sample=None``, which turns clipping off.
    """
    name = process.default_sampler if name is None else name
    check_sampler_name(name, process.kind)
    opts = {k: v for k, v in options.items() if v is not None or k == "clip_sample"}
    return SAMPLERS[name](process, **opts)


def resolve_sampler(sampler: str | Sampler | None, process: NoiseProcess, options: dict[str, Any] | None = None,
                    *, eta: float | None = None) -> Sampler:
    """A built sampler from a name / None / instance, as :func:`~voxdiff.diffusion.base.sample_loop` takes it.

    ``eta`` (the pre-sampler keyword) overrides ``options["eta"]``; a built instance is used as
    it is and refuses extra options.
    """
    if isinstance(sampler, Sampler):
        if options or eta is not None:
            raise VoxdiffError("give sampler options when building the sampler, not with a built sampler")
        if sampler.process is not process:
            raise VoxdiffError(f"sampler {sampler.name!r} was built for another process")
        return sampler
    opts = dict(options or {})
    if eta is not None:
        opts["eta"] = eta
    return build_sampler(sampler, process, **opts)


__all__ = ["SAMPLERS", "Sampler", "DDPMGridSampler", "DDIMSampler", "DDPMAncestralSampler",
           "DPMSolverPlusPlus2MSampler", "BridgeSampler", "build_sampler", "resolve_sampler", "sampler_names",
           "check_sampler_name"]
