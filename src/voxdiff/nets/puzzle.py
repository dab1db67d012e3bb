"""PPDM's pixel-puzzle wrapper: run a backbone on space-to-channel rearranged volumes.

Puzzling by ``r`` per axis shrinks the grid ``r^3``-fold and moves every ``r x r x r`` block
into channels, so a whole 3D volume fits a backbone at full resolution in memory; unpuzzling
the prediction restores the original grid exactly.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from voxdiff.errors import VoxdiffError
from voxdiff.nets.unet import UNet3D
from voxdiff.ops.puzzle import as_triple, puzzle, unpuzzle


class PuzzleNet(nn.Module):
    """``backbone`` applied to ``cat(puzzle(x_t), puzzle(cond))``; output unpuzzled to (B, out_channels, D, H, W).

    The backbone must take ``(C_x + C_cond) * r^3`` input channels and return
    ``out_channels * r^3`` channels (``r^3 = rd*rh*rw``), with signature ``backbone(x, t)``.
    """

    def __init__(self, backbone: nn.Module, factor: int | Sequence[int], out_channels: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.factor = as_triple(factor)
        self.out_channels = int(out_channels)
        self._build_config: dict | None = None

    @property
    def factor_volume(self) -> int:
        """Voxels per puzzle block, ``rd * rh * rw``."""
        return math.prod(self.factor)

    @property
    def required_multiple(self) -> int | tuple[int, int, int]:
        """Spatial sizes must divide by this: ``factor * backbone.required_multiple`` (a triple if anisotropic)."""
        inner = int(getattr(self.backbone, "required_multiple", 1))
        per_axis = tuple(r * inner for r in self.factor)
        return per_axis[0] if len(set(per_axis)) == 1 else per_axis  # type: ignore[return-value]

    def forward(self, x: torch.Tensor, t: torch.Tensor | float | None = None,
                cond: torch.Tensor | None = None) -> torch.Tensor:
        """``x`` (B, C, D, H, W), timesteps ``t`` (B,) or None, condition ``cond`` (B, Cy, D, H, W) or None."""
        if x.ndim != 5:
            raise VoxdiffError(f"PuzzleNet expects a (B, C, D, H, W) tensor, got shape {tuple(x.shape)}")
        mult = as_triple(self.required_multiple, "required_multiple")
        if any(s % m for s, m in zip(x.shape[2:], mult)):
            raise VoxdiffError(f"PuzzleNet (factor {self.factor}) needs spatial sizes divisible by {mult}, "
                               f"got {tuple(x.shape[2:])} (pad with voxdiff.ops.pad_to_multiple)")
        h = puzzle(x, self.factor)
        if cond is not None:
            if cond.shape[0] != x.shape[0] or cond.shape[2:] != x.shape[2:]:
                raise VoxdiffError(f"PuzzleNet condition shape {tuple(cond.shape)} does not match "
                                   f"the input shape {tuple(x.shape)} (batch and spatial sizes must agree)")
            h = torch.cat([h, puzzle(cond.to(h.dtype), self.factor)], dim=1)
        out = self.backbone(h, t)
        expected = self.out_channels * self.factor_volume
        if out.shape[1] != expected:
            raise VoxdiffError(f"PuzzleNet backbone returned {out.shape[1]} channels, expected "
                               f"out_channels * r^3 = {expected}")
        return unpuzzle(out, self.factor)

    def config(self) -> dict:
        """Arguments of :func:`build_ppdm_net` that rebuild this net (only for factory-built nets)."""
        if self._build_config is None:
            raise VoxdiffError("this PuzzleNet was not built by build_ppdm_net; save its backbone config instead")
        return dict(self._build_config)

    @classmethod
    def from_config(cls, config: dict) -> "PuzzleNet":
        """Rebuild a factory-built net from :meth:`config` (weights not included)."""
        return build_ppdm_net(**config)


def build_ppdm_net(in_channels: int = 1, cond_channels: int = 1, out_channels: int = 1,
                   factor: int | Sequence[int] = 2, base_channels: int = 32,
                   channel_mults: Sequence[int] = (1, 2, 2), num_res_blocks: int = 1,
                   attention_levels: Sequence[int] = (), **unet_kwargs) -> PuzzleNet:
    """A :class:`PuzzleNet` around a :class:`UNet3D` sized for the puzzled channels.

    The backbone takes ``(in_channels + cond_channels) * r^3`` channels and returns
    ``out_channels * r^3``; its base width is at least the puzzled input channel count.
    Extra keyword arguments go to :class:`UNet3D` (e.g. ``dropout``, ``gradient_checkpointing``).
    """
    r3 = math.prod(as_triple(factor))
    puzzled_in = (in_channels + cond_channels) * r3
    for forbidden in ("in_channels", "out_channels"):
        if forbidden in unet_kwargs:
            raise VoxdiffError(f"build_ppdm_net sizes the backbone's {forbidden} itself; do not pass it")
    backbone = UNet3D(in_channels=puzzled_in, out_channels=out_channels * r3,
                      base_channels=max(int(base_channels), puzzled_in), channel_mults=channel_mults,
                      num_res_blocks=num_res_blocks, attention_levels=attention_levels, **unet_kwargs)
    net = PuzzleNet(backbone, factor, out_channels)
    fac = factor if isinstance(factor, int) else tuple(int(f) for f in factor)
    net._build_config = dict(in_channels=in_channels, cond_channels=cond_channels, out_channels=out_channels,
                             factor=fac, base_channels=base_channels, channel_mults=tuple(channel_mults),
                             num_res_blocks=num_res_blocks, attention_levels=tuple(attention_levels),
                             **unet_kwargs)
    return net


# Also reachable as ``PuzzleNet.build_ppdm_net(...)``.
PuzzleNet.build_ppdm_net = staticmethod(build_ppdm_net)  # type: ignore[attr-defined]
