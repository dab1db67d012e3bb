"""Noise processes (DDPM, direct bridge) sharing one sampler contract."""

from voxdiff.diffusion.base import NoiseProcess, StepOutput, sample_loop
from voxdiff.diffusion.bridge import BridgeProcess
from voxdiff.diffusion.ddpm import DDPMProcess

__all__ = ["NoiseProcess", "StepOutput", "sample_loop"]
__all__ += ["BridgeProcess"]
__all__ += ["DDPMProcess"]
