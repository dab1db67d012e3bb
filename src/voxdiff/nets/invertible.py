"""IDM backbone: a time-conditioned invertible 3D UNet whose backward stores almost no activations.

Layout (``L = levels``, ``B = blocks_per_level``, width ``C_0 = base_channels``)::

    x -> conv_in -> [ invertible core ] -> GroupNorm-SiLU-conv_out -> out

    core, encoder level l:  B x (coupling, coupling swapped) [+ attention pair]
                            then (l < L-1): split off skip_l, orthogonal 2x downsample (C -> 8C)
    core, decoder level l:  (l < L-1): orthogonal 2x upsample (8C -> C), re-join skip_l
                            then the same stage as the encoder's level l

With the default ``skip_fraction=0.75`` three quarters of the channels go along the skip path
and the rest is downsampled, so widths double per level like a standard UNet
(16 -> 32 -> 64). The core is a bijection on ``(B, C_0, D, H, W)``: :meth:`core_forward` /
:meth:`core_inverse` expose it, and with ``memory_saving=True`` its backward reconstructs
activations by inversion instead of storing them (see :mod:`voxdiff.nets.invertible_autograd`).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from voxdiff.errors import VoxdiffError
from voxdiff.nets.embeddings import TimestepEmbedding, sinusoidal_embedding
from voxdiff.nets.invertible_autograd import InvertibleSequential, inverse_chain, run_chain
from voxdiff.nets.invertible_blocks import (AdditiveCoupling, AffineCoupling, ChannelMerge, ChannelSplit,
                                            CouplingNet, InvertibleAttention, InvertibleDownsample,
                                            InvertibleModule, InvertibleOp, InvertibleUpsample, OneSidedCoupling,
                                            haar_matrix_3d)
from voxdiff.nets.memory import saved_activation_bytes
from voxdiff.nets.unet import check_unet_input, group_count

COUPLINGS = ("additive", "affine")

__all__ = [
    "AdditiveCoupling", "AffineCoupling", "ChannelMerge", "ChannelSplit", "CouplingNet", "InvertibleAttention",
    "InvertibleDownsample", "InvertibleModule", "InvertibleOp", "InvertibleSequential", "InvertibleUNet",
    "InvertibleUpsample", "OneSidedCoupling", "haar_matrix_3d", "inverse_chain", "run_chain",
    "saved_activation_bytes",
]


class InvertibleUNet(nn.Module):
    """Time-conditioned invertible 3D UNet, ``forward(x, t) -> (B, out_channels, D, H, W)``.

    Same call as :class:`voxdiff.nets.unet.UNet3D`, so it is a drop-in backbone (also inside a
    ``PuzzleNet``). Only ``conv_in`` and the output head are non-invertible.

    Args:
        in_channels / out_channels: input and output channel counts.
        base_channels: width of the invertible core at full resolution (>= 2).
        levels: resolution levels; spatial sizes must divide by ``2 ** (levels - 1)``.
        blocks_per_level: coupling pairs per level in the encoder and again in the decoder
            (the bottom level therefore runs ``2 * blocks_per_level``).
        attention_levels: levels (0 = full resolution) with an invertible attention pair after
            the couplings; attention is quadratic in voxels, so keep it to coarse levels.
        coupling: ``"additive"`` (volume preserving, most exact inverse) or ``"affine"``.
        memory_saving: backward by inversion (O(1) activation memory in depth) instead of
            stored activations; gradients are the same up to float rounding.
        temb_dim: timestep-embedding width (default ``4 * base_channels``).
        norm_groups: GroupNorm groups (reduced to a divisor of each width).
        attention_heads: heads per attention layer.
        skip_fraction: fraction of a level's channels sent along its skip path.
        dropout: dropout inside coupling functions (replayed exactly by the memory-saving backward).
        affine_scale_bound: affine couplings scale by at most ``exp(+-bound)`` per block.
        zero_init: couplings start as the identity (recommended for training).
        preserve_rng_state: restore the RNG when recomputing (only matters with dropout).
    """

    def __init__(self, in_channels: int = 1, out_channels: int = 1, base_channels: int = 16, levels: int = 3,
                 blocks_per_level: int = 2, attention_levels: Sequence[int] = (), coupling: str = "additive",
                 memory_saving: bool = True, temb_dim: int | None = None, norm_groups: int = 8,
                 attention_heads: int = 4, skip_fraction: float = 0.75, dropout: float = 0.0,
                 affine_scale_bound: float = 2.0, zero_init: bool = True, preserve_rng_state: bool = True) -> None:
        super().__init__()
        attn = tuple(int(a) for a in attention_levels)
        if levels < 1:
            raise VoxdiffError(f"levels must be >= 1, got {levels}")
        if blocks_per_level < 1:
            raise VoxdiffError(f"blocks_per_level must be >= 1, got {blocks_per_level}")
        if base_channels < 2:
            raise VoxdiffError(f"base_channels must be >= 2 for channel-split couplings, got {base_channels}")
        if coupling not in COUPLINGS:
            raise VoxdiffError(f"coupling must be one of {COUPLINGS}, got {coupling!r}")
        if not 0.0 < skip_fraction < 1.0:
            raise VoxdiffError(f"skip_fraction must be in (0, 1), got {skip_fraction}")
        if any(not 0 <= a < levels for a in attn):
            raise VoxdiffError(f"attention_levels {attn} must be level indices in 0..{levels - 1}")
        temb_dim = int(temb_dim or 4 * base_channels)
        self._config = dict(in_channels=in_channels, out_channels=out_channels, base_channels=base_channels,
                            levels=levels, blocks_per_level=blocks_per_level, attention_levels=attn,
                            coupling=coupling, memory_saving=memory_saving, temb_dim=temb_dim,
                            norm_groups=norm_groups, attention_heads=attention_heads,
                            skip_fraction=skip_fraction, dropout=dropout, affine_scale_bound=affine_scale_bound,
                            zero_init=zero_init, preserve_rng_state=preserve_rng_state)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.levels = levels
        self.memory_saving = memory_saving
        self.preserve_rng_state = preserve_rng_state

        # Level widths: keep (1 - skip_fraction) of the channels, which 2x2x2 downsampling multiplies by 8.
        self.widths, self.skip_channels = [base_channels], []
        for _ in range(levels - 1):
            c = self.widths[-1]
            keep = min(c - 1, max(1, round(c * (1.0 - skip_fraction))))
            self.skip_channels.append(c - keep)
            self.widths.append(8 * keep)

        def stage(level: int) -> list[InvertibleOp]:
            c = self.widths[level]
            ops: list[InvertibleOp] = []
            for _ in range(blocks_per_level):
                for swap in (False, True):
                    if coupling == "additive":
                        ops.append(AdditiveCoupling(c, temb_dim, norm_groups=norm_groups, dropout=dropout,
                                                    swap=swap, zero_init=zero_init))
                    else:
                        ops.append(AffineCoupling(c, temb_dim, norm_groups=norm_groups, dropout=dropout,
                                                  swap=swap, zero_init=zero_init, scale_bound=affine_scale_bound))
            if level in attn:
                ops += [InvertibleAttention(c, temb_dim, num_heads=attention_heads, norm_groups=norm_groups,
                                            swap=swap, zero_init=zero_init) for swap in (False, True)]
            return ops

        ops: list[InvertibleOp] = []
        for level in range(levels):
            ops += stage(level)
            if level < levels - 1:
                skip = self.skip_channels[level]
                ops += [ChannelSplit(skip), InvertibleDownsample(self.widths[level] - skip)]
        for level in reversed(range(levels)):
            if level < levels - 1:
                skip = self.skip_channels[level]
                ops += [InvertibleUpsample(self.widths[level] - skip), ChannelMerge(skip)]
            ops += stage(level)
        self.core = nn.ModuleList(ops)

        self.time_embed = TimestepEmbedding(base_channels, temb_dim)
        self.conv_in = nn.Conv3d(in_channels, base_channels, 3, padding=1)
        self.norm_out = nn.GroupNorm(group_count(base_channels, norm_groups), base_channels, eps=1e-6)
        self.conv_out = nn.Conv3d(base_channels, out_channels, 3, padding=1)
        # Small (not zero) output init, as in UNet3D: starts near 0 yet trains quickly.
        with torch.no_grad():
            self.conv_out.weight.mul_(0.1)
            self.conv_out.bias.zero_()

    @property
    def required_multiple(self) -> int:
        """Spatial sizes must be divisible by this (``2 ** (levels - 1)``)."""
        return 2 ** (self.levels - 1)

    def config(self) -> dict:
        """Constructor arguments, to rebuild the net from a checkpoint: ``InvertibleUNet(**net.config())``."""
        return dict(self._config)

    def embed_time(self, t: torch.Tensor | float | None, batch: int, device: torch.device | str) -> torch.Tensor:
        """Timesteps ``t`` ((B,), scalar, or None = 0) -> the core's conditioning ``temb`` (B, temb_dim)."""
        if t is None:
            t = 0
        t = torch.as_tensor(t, device=device).reshape(-1)
        if t.numel() == 1:
            t = t.expand(batch)
        if t.numel() != batch:
            raise VoxdiffError(f"InvertibleUNet got {t.numel()} timesteps for a batch of {batch}")
        # sinusoidal_embedding is float32; match the MLP so a float64 model works too.
        feats = sinusoidal_embedding(t, self.time_embed.base_dim)
        return self.time_embed.mlp(feats.to(self.time_embed.mlp[0].weight.dtype))

    def core_forward(self, h: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        """The invertible core: (B, base_channels, D, H, W) -> same shape (memory saving if enabled)."""
        return run_chain(self.core, (h,), temb, memory_saving=self.memory_saving,
                         preserve_rng_state=self.preserve_rng_state)[0]

    def core_inverse(self, y: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        """Exact inverse of :meth:`core_forward` (dropout must be off, i.e. eval mode or ``dropout=0``)."""
        return inverse_chain(self.core, (y,), temb)[0]

    def _check_input(self, x: torch.Tensor) -> None:
        check_unet_input(x, "InvertibleUNet", self.in_channels, self.levels, self.required_multiple)

    def forward(self, x: torch.Tensor, t: torch.Tensor | float | None = None) -> torch.Tensor:
        """``x`` (B, in_channels, D, H, W), ``t`` (B,) or scalar timesteps (None = 0) -> (B, out_channels, D, H, W)."""
        self._check_input(x)
        temb = self.embed_time(t, x.shape[0], x.device)
        # Keep the core's state in the input dtype (float32 under autocast) so inversion stays exact.
        h = self.conv_in(x).to(x.dtype)
        y = self.core_forward(h, temb)
        return self.conv_out(F.silu(self.norm_out(y)))
