"""Time-conditioned 3D UNet: the backbone for PPDM (puzzled), PD-DDPM and plain segmentation.

Layout per level ``i`` (width ``base_channels * channel_mults[i]``): ``num_res_blocks``
residual blocks (GroupNorm + SiLU + conv, timestep scale/shift), optional voxel
self-attention, then a strided-conv downsample. The decoder upsamples (nearest + conv, or a
transposed conv), concatenates the encoder output of the same level and runs the same number
of residual blocks. One skip per level keeps 3D activation memory low.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from voxdiff.errors import VoxdiffError
from voxdiff.nets.embeddings import TimestepEmbedding


def group_count(channels: int, max_groups: int) -> int:
    """Largest divisor of ``channels`` that is ``<= max_groups`` (GroupNorm needs one)."""
    g = max(1, min(int(max_groups), channels))
    while channels % g:
        g -= 1
    return g


def _norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(group_count(channels, groups), channels, eps=1e-6)


def check_unet_input(x: torch.Tensor, name: str, in_channels: int, levels: int, multiple: int) -> None:
    """Refuse a tensor a UNet cannot take (rank, channels, spatial sizes) with a clear message."""
    if x.ndim != 5:
        raise VoxdiffError(f"{name} expects a (B, C, D, H, W) tensor, got shape {tuple(x.shape)}")
    if x.shape[1] != in_channels:
        raise VoxdiffError(f"{name} built for {in_channels} input channels got {x.shape[1]}")
    if any(s % multiple for s in x.shape[2:]):
        raise VoxdiffError(f"{name} with {levels} levels needs spatial sizes divisible by {multiple}, "
                           f"got {tuple(x.shape[2:])} (pad with voxdiff.ops.pad_to_multiple)")


class ResBlock3D(nn.Module):
    """Residual block; the timestep embedding modulates the second norm as ``h * (1 + scale) + shift``."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int | None, groups: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = _norm(in_ch, groups)
        self.conv1 = nn.Conv3d(in_ch, out_ch, 3, padding=1)
        self.emb = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, 2 * out_ch)) if emb_dim else None
        self.norm2 = _norm(out_ch, groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv3d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Conv3d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None) -> torch.Tensor:
        """(B, in_ch, ...) and (B, emb_dim) or None -> (B, out_ch, ...)."""
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.norm2(h)
        if self.emb is not None and emb is not None:
            scale, shift = self.emb(emb)[:, :, None, None, None].chunk(2, dim=1)
            h = h * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class Attention3D(nn.Module):
    """Multi-head self-attention over all voxels via ``scaled_dot_product_attention`` (flash/mem-efficient)."""

    def __init__(self, channels: int, heads: int, groups: int) -> None:
        super().__init__()
        self.heads = math.gcd(channels, max(1, heads))
        self.norm = _norm(channels, groups)
        self.qkv = nn.Conv3d(channels, 3 * channels, 1)
        self.proj = nn.Conv3d(channels, channels, 1)
        # Start close to identity so attention does not disturb early training.
        nn.init.normal_(self.proj.weight, std=1e-3)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, D, H, W) -> same shape."""
        b, c, *spatial = x.shape
        qkv = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, -1)
        q, k, v = (qkv[:, i].transpose(-1, -2) for i in range(3))  # (B, heads, N, head_dim)
        out = F.scaled_dot_product_attention(q, k, v)
        out = out.transpose(-1, -2).reshape(b, c, *spatial)
        return x + self.proj(out)


class _Level(nn.Module):
    """Residual blocks (+ attention after each) at one resolution."""

    def __init__(self, in_ch: int, out_ch: int, n_blocks: int, emb_dim: int | None, groups: int,
                 dropout: float, attention: bool, heads: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            ResBlock3D(in_ch if i == 0 else out_ch, out_ch, emb_dim, groups, dropout) for i in range(n_blocks))
        self.attns = nn.ModuleList(
            Attention3D(out_ch, heads, groups) if attention else nn.Identity() for _ in range(n_blocks))


class UNet3D(nn.Module):
    """Time-conditioned 3D UNet, ``forward(x, t) -> (B, out_channels, D, H, W)``.

    Args:
        in_channels / out_channels: input and output channel counts.
        base_channels: width of the first level; level ``i`` has ``base_channels * channel_mults[i]``.
        channel_mults: one multiplier per level; ``len(channel_mults) - 1`` downsamplings.
        num_res_blocks: residual blocks per level (encoder and decoder each), >= 1.
        attention_levels: level indices (0 = full resolution) with voxel self-attention; the
            bottleneck gets attention when the deepest level is listed.
        attention_heads: heads per attention layer (reduced to a divisor of the width).
        norm_groups: GroupNorm groups (reduced to a divisor of each width).
        dropout: dropout inside residual blocks.
        upsample: ``"nearest"`` (nearest + 3^3 conv) or ``"transpose"`` (2^3 transposed conv).
        gradient_checkpointing: recompute block activations in backward (less memory, same result).
        time_conditioned: if False there is no timestep embedding and ``t`` may be None.
    """

    def __init__(self, in_channels: int = 1, out_channels: int = 1, base_channels: int = 32,
                 channel_mults: Sequence[int] = (1, 2, 4), num_res_blocks: int = 2,
                 attention_levels: Sequence[int] = (), attention_heads: int = 4, norm_groups: int = 8,
                 dropout: float = 0.0, upsample: str = "nearest", gradient_checkpointing: bool = False,
                 time_conditioned: bool = True) -> None:
        super().__init__()
        mults = tuple(int(m) for m in channel_mults)
        attn = tuple(int(a) for a in attention_levels)
        if not mults or min(mults) < 1:
            raise VoxdiffError(f"channel_mults must be a non-empty tuple of positive ints, got {channel_mults!r}")
        if num_res_blocks < 1:
            raise VoxdiffError(f"num_res_blocks must be >= 1, got {num_res_blocks}")
        if any(not 0 <= a < len(mults) for a in attn):
            raise VoxdiffError(f"attention_levels {attn} must be level indices in 0..{len(mults) - 1}")
        if upsample not in ("nearest", "transpose"):
            raise VoxdiffError(f"upsample must be 'nearest' or 'transpose', got {upsample!r}")
        self._config = dict(in_channels=in_channels, out_channels=out_channels, base_channels=base_channels,
                            channel_mults=mults, num_res_blocks=num_res_blocks, attention_levels=attn,
                            attention_heads=attention_heads, norm_groups=norm_groups, dropout=dropout,
                            upsample=upsample, gradient_checkpointing=gradient_checkpointing,
                            time_conditioned=time_conditioned)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.levels = len(mults)
        self.gradient_checkpointing = gradient_checkpointing
        self.time_conditioned = time_conditioned
        widths = [base_channels * m for m in mults]
        emb_dim = 4 * base_channels if time_conditioned else None
        self.time_embed = TimestepEmbedding(base_channels, emb_dim) if time_conditioned else None

        self.conv_in = nn.Conv3d(in_channels, widths[0], 3, padding=1)
        self.down_levels = nn.ModuleList()
        self.downsamplers = nn.ModuleList()
        prev = widths[0]
        for i, w in enumerate(widths):
            self.down_levels.append(_Level(prev, w, num_res_blocks, emb_dim, norm_groups, dropout,
                                           i in attn, attention_heads))
            if i < self.levels - 1:
                self.downsamplers.append(nn.Conv3d(w, w, 3, stride=2, padding=1))
            prev = w
        self.mid = _Level(widths[-1], widths[-1], 1, emb_dim, norm_groups, dropout,
                          self.levels - 1 in attn, attention_heads)
        self.upsamplers = nn.ModuleList()
        self.up_levels = nn.ModuleList()
        for i in reversed(range(self.levels - 1)):
            below = widths[i + 1]
            if upsample == "transpose":
                self.upsamplers.append(nn.ConvTranspose3d(below, below, 2, stride=2))
            else:
                self.upsamplers.append(nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"),
                                                     nn.Conv3d(below, below, 3, padding=1)))
            self.up_levels.append(_Level(below + widths[i], widths[i], num_res_blocks, emb_dim, norm_groups,
                                         dropout, i in attn, attention_heads))
        self.norm_out = _norm(widths[0], norm_groups)
        self.conv_out = nn.Conv3d(widths[0], out_channels, 3, padding=1)
        # Small (not zero) output init: starts near 0 yet trains quickly.
        with torch.no_grad():
            self.conv_out.weight.mul_(0.1)
            self.conv_out.bias.zero_()

    @property
    def required_multiple(self) -> int:
        """Spatial sizes must be divisible by this (``2 ** (levels - 1)``)."""
        return 2 ** (self.levels - 1)

    def config(self) -> dict:
        """Constructor arguments, to rebuild the net from a checkpoint: ``UNet3D(**net.config())``."""
        return dict(self._config)

    def _run(self, fn, *args):
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(fn, *args, use_reentrant=False)
        return fn(*args)

    def _level(self, level: _Level, h: torch.Tensor, emb: torch.Tensor | None) -> torch.Tensor:
        for block, att in zip(level.blocks, level.attns):
            h = self._run(block, h, emb)
            if not isinstance(att, nn.Identity):
                h = self._run(att, h)
        return h

    def _check_input(self, x: torch.Tensor) -> None:
        check_unet_input(x, "UNet3D", self.in_channels, self.levels, self.required_multiple)

    def forward(self, x: torch.Tensor, t: torch.Tensor | float | None = None) -> torch.Tensor:
        """``x`` (B, in_channels, D, H, W), ``t`` (B,) or scalar timesteps (None if not time-conditioned)."""
        self._check_input(x)
        emb = None
        if self.time_embed is not None:
            if t is None:
                raise VoxdiffError("this UNet3D is time-conditioned: pass timesteps t")
            t = torch.as_tensor(t, device=x.device).reshape(-1)
            if t.numel() == 1:
                t = t.expand(x.shape[0])
            emb = self.time_embed(t)
        h = self.conv_in(x)
        skips = []
        for i, level in enumerate(self.down_levels):
            h = self._level(level, h, emb)
            if i < self.levels - 1:
                skips.append(h)
                h = self.downsamplers[i](h)
        h = self._level(self.mid, h, emb)
        for up, level in zip(self.upsamplers, self.up_levels):
            h = torch.cat([up(h), skips.pop()], dim=1)
            h = self._level(level, h, emb)
        return self.conv_out(F.silu(self.norm_out(h)))
