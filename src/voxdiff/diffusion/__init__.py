"""Noise processes (DDPM, direct bridge) sharing one sampler contract."""

from voxdiff.diffusion.base import NoiseProcess, StepOutput, sample_loop

__all__ = ["NoiseProcess", "StepOutput", "sample_loop"]
