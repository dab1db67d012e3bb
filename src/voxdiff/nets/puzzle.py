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
