"""Build a noise process from its config section (``model.process``)."""

from __future__ import annotations

from voxdiff.diffusion.base import NoiseProcess
from voxdiff.errors import VoxdiffError


def build_process(cfg: dict) -> NoiseProcess:
    """``{"kind": "bridge"|"ddpm", ...constructor arguments}`` -> a NoiseProcess."""
    cfg = dict(cfg)
    kind = cfg.pop("kind", None)
    if kind == "bridge":
        from voxdiff.diffusion.bridge import BridgeProcess

        return BridgeProcess(**cfg)
    if kind == "ddpm":
        from voxdiff.diffusion.ddpm import DDPMProcess

        return DDPMProcess(**cfg)
    raise VoxdiffError(f"unknown noise process kind {kind!r} (use 'bridge' or 'ddpm')")
