"""Build a task's network from its config: a backbone, always seen through a PuzzleNet.

With ``puzzle_factor: 1`` the puzzle is the identity, so every task calls its network the
same way, ``net(x_t, t, cond=...)``, whatever the backbone.
"""

from __future__ import annotations

import torch
from torch import nn

from voxdiff.errors import VoxdiffError


class MonaiDiffusionUNet(nn.Module):
    """MONAI's ``DiffusionModelUNet`` (the full-3D baseline) behind voxdiff's ``net(x, t)`` call."""

    def __init__(self, in_channels: int, out_channels: int, channels=(32, 64, 64), num_res_blocks: int = 1,
                 attention_levels=(False, False, False), norm_num_groups: int = 8, num_head_channels: int = 32,
                 use_flash_attention: bool = True, gradient_checkpointing: bool = False) -> None:
        super().__init__()
        from monai.networks.nets import DiffusionModelUNet

        channels = tuple(channels)
        attention_levels = tuple(bool(a) for a in attention_levels) or (False,) * len(channels)
        self.net = DiffusionModelUNet(
            spatial_dims=3, in_channels=in_channels, out_channels=out_channels, channels=channels,
            num_res_blocks=num_res_blocks, attention_levels=attention_levels,
            norm_num_groups=norm_num_groups, num_head_channels=num_head_channels,
            use_flash_attention=use_flash_attention and torch.cuda.is_available(),
        )
        self.gradient_checkpointing = gradient_checkpointing
        self.required_multiple = 2 ** (len(channels) - 1)

    def forward(self, x: torch.Tensor, t: torch.Tensor | None) -> torch.Tensor:
        """Predict from ``x`` at timesteps ``t`` (zeros when the task has no time)."""
        if t is None:
            t = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        if self.gradient_checkpointing and self.training:
            from torch.utils.checkpoint import checkpoint

            return checkpoint(self.net, x, t, use_reentrant=False)
        return self.net(x, t)


def build_backbone(cfg: dict, in_channels: int, out_channels: int) -> nn.Module:
    """``{"kind": "unet"|"invertible"|"monai", ...}`` -> a module called as ``net(x, t)``."""
    cfg = dict(cfg)
    kind = cfg.pop("kind", "unet")
    if kind == "unet":
        from voxdiff.nets.unet import UNet3D

        return UNet3D(in_channels=in_channels, out_channels=out_channels, **cfg)
    if kind == "invertible":
        from voxdiff.nets.invertible import InvertibleUNet

        return InvertibleUNet(in_channels=in_channels, out_channels=out_channels, **cfg)
    if kind == "monai":
        return MonaiDiffusionUNet(in_channels=in_channels, out_channels=out_channels, **cfg)
    raise VoxdiffError(f"unknown backbone kind {kind!r} (use unet, invertible or monai)")


def build_network(backbone_cfg: dict, *, in_channels: int, cond_channels: int, out_channels: int,
                  puzzle_factor: int | tuple[int, int, int] = 1) -> nn.Module:
    """A PuzzleNet over a backbone sized for ``r^3`` times the channels of the puzzled inputs."""
    from voxdiff.nets.puzzle import PuzzleNet

    f = (puzzle_factor,) * 3 if isinstance(puzzle_factor, int) else tuple(puzzle_factor)
    mult = int(f[0] * f[1] * f[2])
    backbone = build_backbone(backbone_cfg, (in_channels + cond_channels) * mult, out_channels * mult)
    return PuzzleNet(backbone, puzzle_factor, out_channels)
