"""Pixel puzzling: a lossless 3D space-to-channel rearrangement, and padding helpers.

Channel order convention (same as ``torch.nn.PixelUnshuffle`` extended to 3D): for a factor
``(rd, rh, rw)`` the output channel of input channel ``c`` and in-block offset ``(i, j, k)`` is

    ``c * rd*rh*rw + i * rh*rw + j * rw + k``

so ``puzzle(x)[b, c*R + i*rh*rw + j*rw + k, d, h, w] == x[b, c, d*rd + i, h*rh + j, w*rw + k]``
with ``R = rd*rh*rw``. All channels of one input channel are contiguous.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from einops import rearrange

from voxdiff.errors import VoxdiffError

Triple = tuple[int, int, int]
PadSpec = tuple[tuple[int, int], tuple[int, int], tuple[int, int]]
PAD_MODES = ("constant", "replicate", "reflect")


def as_triple(value: int | Sequence[int], name: str = "factor") -> Triple:
    """Normalise an int or a 3-sequence of positive ints into a per-axis (D, H, W) triple."""
    if isinstance(value, (int,)) and not isinstance(value, bool):
        out = (value, value, value)
    else:
        try:
            out = tuple(int(v) for v in value)  # type: ignore[union-attr]
        except TypeError:
            raise VoxdiffError(f"{name} must be an int or a triple of ints, got {value!r}") from None
        if len(out) != 3:
            raise VoxdiffError(f"{name} must be an int or a triple of ints, got {value!r}")
    if any(v < 1 for v in out):
        raise VoxdiffError(f"{name} must be positive, got {value!r}")
    return out  # type: ignore[return-value]


def _check_5d(x: torch.Tensor, what: str) -> None:
    if x.ndim != 5:
        raise VoxdiffError(f"{what} expects a (B, C, D, H, W) tensor, got shape {tuple(x.shape)}")


def puzzle(x: torch.Tensor, factor: int | Sequence[int]) -> torch.Tensor:
    """Space-to-channel: (B, C, D, H, W) -> (B, C*rd*rh*rw, D/rd, H/rh, W/rw), lossless.

    ``factor`` is an int or a per-axis ``(rd, rh, rw)``. Channel order: see the module docstring
    (a 3D ``PixelUnshuffle``). Raises :class:`VoxdiffError` when a spatial size does not divide.
    """
    rd, rh, rw = as_triple(factor)
    _check_5d(x, "puzzle")
    d, h, w = x.shape[2:]
    if d % rd or h % rh or w % rw:
        raise VoxdiffError(
            f"cannot puzzle a volume of spatial shape {(d, h, w)} by factor {(rd, rh, rw)}: "
            f"every size must be divisible by its factor (pad with pad_to_multiple first)")
    return rearrange(x, "b c (d rd) (h rh) (w rw) -> b (c rd rh rw) d h w", rd=rd, rh=rh, rw=rw)


def unpuzzle(x: torch.Tensor, factor: int | Sequence[int]) -> torch.Tensor:
    """Channel-to-space, the exact inverse of :func:`puzzle` (bitwise, any dtype)."""
    rd, rh, rw = as_triple(factor)
    _check_5d(x, "unpuzzle")
    r = rd * rh * rw
    if x.shape[1] % r:
        raise VoxdiffError(
            f"cannot unpuzzle a tensor with {x.shape[1]} channels by factor {(rd, rh, rw)}: "
            f"the channel count must be a multiple of {r}")
    return rearrange(x, "b (c rd rh rw) d h w -> b c (d rd) (h rh) (w rw)", rd=rd, rh=rh, rw=rw)


def pad_spec(shape: Sequence[int], multiple: int | Sequence[int]) -> PadSpec:
    """Padding ``((before, after),) * 3`` that brings a spatial ``shape`` to a multiple of ``multiple``.

    Split symmetrically; the extra voxel of an odd amount goes after.
    """
    mult = as_triple(multiple, "multiple")
    out = []
    for n, m in zip(shape, mult):
        total = (-int(n)) % m
        out.append((total // 2, total - total // 2))
    return tuple(out)  # type: ignore[return-value]


def pad_to_multiple(x: torch.Tensor, multiple: int | Sequence[int], mode: str = "constant",
                    value: float = 0.0) -> tuple[torch.Tensor, PadSpec]:
    """Pad the last three axes of ``x`` up to a multiple of ``multiple`` (int or per-axis triple).

    Padding is split symmetrically (the extra voxel of an odd amount goes after). ``mode`` is
    ``"constant"`` (filled with ``value``, any dtype), ``"replicate"`` or ``"reflect"`` (floating
    point only). Works on (D, H, W),
    (C, D, H, W) and (B, C, D, H, W). Returns ``(padded, pad_spec)`` where ``pad_spec`` is
    ``((d_before, d_after), (h_before, h_after), (w_before, w_after))`` for :func:`crop_to`.
    """
    if mode not in PAD_MODES:
        raise VoxdiffError(f"pad mode must be one of {PAD_MODES}, got {mode!r}")
    if x.ndim < 3:
        raise VoxdiffError(f"pad_to_multiple expects at least 3 axes, got shape {tuple(x.shape)}")
    sizes = x.shape[-3:]
    mult = as_triple(multiple, "multiple")
    spec = pad_spec(tuple(sizes), mult)
    if all(a == 0 and b == 0 for a, b in spec):
        return x, spec
    if mode == "reflect":
        for n, (a, b) in zip(sizes, spec):
            if max(a, b) >= n:
                raise VoxdiffError(
                    f"cannot reflect-pad spatial shape {tuple(sizes)} to a multiple of {mult}: "
                    f"padding {max(a, b)} is not smaller than the axis size {n}")
    # F.pad takes (w_before, w_after, h_before, h_after, d_before, d_after).
    flat = [p for pair in reversed(spec) for p in pair]
    if mode == "constant":
        return F.pad(x, flat, mode="constant", value=value), spec
    if not x.is_floating_point():
        raise VoxdiffError(f"{mode} padding needs a floating-point tensor, got {x.dtype} (use mode='constant')")
    # replicate/reflect need a (N, C, D, H, W) tensor: fold leading axes into one batch.
    lead = x.shape[:-3]
    x5 = x.reshape(-1, 1, *sizes)
    padded = F.pad(x5, flat, mode=mode)
    return padded.reshape(*lead, *padded.shape[-3:]), spec


def crop_to(x: torch.Tensor, pad_spec: PadSpec) -> torch.Tensor:
    """Undo :func:`pad_to_multiple`: crop the last three axes by ``pad_spec`` exactly."""
    if x.ndim < 3:
        raise VoxdiffError(f"crop_to expects at least 3 axes, got shape {tuple(x.shape)}")
    slices = []
    for n, (a, b) in zip(x.shape[-3:], pad_spec):
        if a < 0 or b < 0 or a + b > n:
            raise VoxdiffError(f"pad spec {pad_spec} does not fit spatial shape {tuple(x.shape[-3:])}")
        slices.append(slice(a, n - b))
    return x[(..., *slices)]
