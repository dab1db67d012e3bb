"""Noise processes (DDPM, direct bridge) and the samplers chosen for them at inference."""

from voxdiff.diffusion.base import NoiseProcess, StepOutput, sample_loop
from voxdiff.diffusion.bridge import BridgeProcess
from voxdiff.diffusion.ddpm import DDPMProcess
from voxdiff.diffusion.samplers import SAMPLERS, Sampler, build_sampler, sampler_names

__all__ = ["NoiseProcess", "StepOutput", "sample_loop"]
__all__ += ["BridgeProcess"]
__all__ += ["DDPMProcess"]
__all__ += ["SAMPLERS", "Sampler", "build_sampler", "sampler_names"]
