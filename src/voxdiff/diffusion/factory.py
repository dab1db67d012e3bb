"""Build a noise process from its config section (``model.process``): one registry, kind -> class."""

from __future__ import annotations

from voxdiff.diffusion.base import NoiseProcess
from voxdiff.diffusion.bridge import BridgeProcess
from voxdiff.diffusion.ddpm import DDPMProcess
from voxdiff.errors import VoxdiffError

PROCESSES: dict[str, type[NoiseProcess]] = {cls.kind: cls for cls in (BridgeProcess, DDPMProcess)}


def build_process(cfg: dict) -> NoiseProcess:
    """``{"kind": "bridge"|"ddpm", ...constructor arguments}`` -> a NoiseProcess."""
    cfg = dict(cfg)
    kind = cfg.pop("kind", None)
    if kind not in PROCESSES:
        raise VoxdiffError(f"unknown noise process kind {kind!r} (use one of {', '.join(map(repr, PROCESSES))})")
    return PROCESSES[kind](**cfg)
