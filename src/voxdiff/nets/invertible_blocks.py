"""Exactly invertible layers for voxdiff's invertible 3D UNet.

Every layer is an :class:`InvertibleOp`: ``forward(*x, temb)`` and ``inverse(*y, temb)`` undo
each other up to float rounding. Couplings and attention are *one-sided*: one channel half
conditions a function that updates the other half (``swap`` picks which half), so the inverse
evaluates the same function once, on the same input, with the same random draws. The
memory-saving backward in :mod:`voxdiff.nets.invertible_autograd` relies on exactly that.

Precision: the sub-networks (convs, attention) may run in an autocast dtype, but the invertible
"glue" (the addition, the affine scaling, the orthogonal resampling) is done in the state's own
dtype, so a float32 state stays float32 under ``torch.autocast``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from voxdiff.errors import VoxdiffError
from voxdiff.nets.unet import group_count


class InvertibleOp(nn.Module):
    """A bijection between ``n_in`` and ``n_out`` tensors, conditioned on an optional ``temb``.

    ``forward(*inputs, temb)`` returns a tensor (``n_out == 1``) or a tuple, and
    ``inverse(*outputs, temb)`` the inputs. ``deterministic`` tells the memory-saving backward
    whether it may skip saving the RNG state for this op (default: not known, so it saves it).
    """

    n_in = 1
    n_out = 1

    @property
    def deterministic(self) -> bool:
        """True when the op draws no random numbers (no active dropout)."""
        return False

    def inverse(self, *outputs: torch.Tensor, temb: torch.Tensor | None = None):  # pragma: no cover
        """Recover the inputs from the outputs."""
        raise NotImplementedError


class InvertibleModule(InvertibleOp):
    """An :class:`InvertibleOp` from one tensor to one tensor: ``forward(x, temb)`` / ``inverse(y, temb)``."""

    @property
    def deterministic(self) -> bool:
        """True unless some dropout inside is active (training mode, ``p > 0``)."""
        return not any(isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0 and m.training
                       for m in self.modules())


def _halves(x: torch.Tensor, swap: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(conditioning half, updated half); the first half has ``C // 2`` channels."""
    n1 = x.shape[1] // 2
    a, b = x[:, :n1], x[:, n1:]
    return (b, a) if swap else (a, b)


def _join(cond: torch.Tensor, upd: torch.Tensor, swap: bool) -> torch.Tensor:
    return torch.cat([upd, cond] if swap else [cond, upd], dim=1)


def _half_sizes(channels: int, swap: bool) -> tuple[int, int]:
    if channels < 2:
        raise VoxdiffError(f"an invertible coupling needs at least 2 channels, got {channels}")
    n1 = channels // 2
    return (channels - n1, n1) if swap else (n1, channels - n1)


def _film(temb_dim: int | None, channels: int) -> nn.Module | None:
    return nn.Sequential(nn.SiLU(), nn.Linear(temb_dim, 2 * channels)) if temb_dim else None


def _apply_film(film: nn.Module | None, h: torch.Tensor, temb: torch.Tensor | None) -> torch.Tensor:
    if film is None:
        return h
    if temb is None:
        raise ValueError("this invertible block is time-conditioned: pass temb")
    scale, shift = film(temb)[:, :, None, None, None].chunk(2, dim=1)
    return h * (1 + scale) + shift


class CouplingNet(nn.Module):
    """The coupling function: GroupNorm-SiLU-Conv3d, GroupNorm + timestep scale/shift, SiLU-Dropout-Conv3d.

    It need not be invertible. ``zero_init`` zeroes the last conv so a coupling starts as the
    identity (the usual start for deep invertible nets).
    """

    def __init__(self, in_channels: int, out_channels: int, hidden_channels: int, temb_dim: int | None,
                 norm_groups: int = 8, dropout: float = 0.0, zero_init: bool = True) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(group_count(in_channels, norm_groups), in_channels, eps=1e-6)
        self.conv1 = nn.Conv3d(in_channels, hidden_channels, 3, padding=1)
        self.norm2 = nn.GroupNorm(group_count(hidden_channels, norm_groups), hidden_channels, eps=1e-6)
        self.film = _film(temb_dim, hidden_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv3d(hidden_channels, out_channels, 3, padding=1)
        if zero_init:
            nn.init.zeros_(self.conv2.weight)
            nn.init.zeros_(self.conv2.bias)

    def forward(self, x: torch.Tensor, temb: torch.Tensor | None) -> torch.Tensor:
        """(B, in, D, H, W) and (B, temb_dim) -> (B, out, D, H, W)."""
        h = self.conv1(F.silu(self.norm1(x)))
        h = _apply_film(self.film, self.norm2(h), temb)
        return self.conv2(self.dropout(F.silu(h)))


class OneSidedCoupling(InvertibleModule):
    """Base of every coupling: ``y_c = x_c``, ``y_u = couple(x_u, fn(x_c, temb))``.

    ``(c, u)`` is the (first, second) channel half, or (second, first) with ``swap``. Subclasses
    define the coupling function :meth:`fn` and the elementwise :meth:`couple` /
    :meth:`uncouple` pair. Because ``x_c`` passes through unchanged, one evaluation of ``fn``
    serves both the reconstruction and the gradient in the memory-saving backward
    (:meth:`inverse_with_graph`), instead of one for the inverse and one for the recomputation.
    """

    swap: bool = False

    def fn(self, c: torch.Tensor, temb: torch.Tensor | None) -> torch.Tensor:  # pragma: no cover
        """The (non-invertible) coupling function of the conditioning half."""
        raise NotImplementedError

    def couple(self, u: torch.Tensor, out: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        """Update the other half with ``out = fn(c)``; invertible in ``u``."""
        raise NotImplementedError

    def uncouple(self, y_u: torch.Tensor, out: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        """Inverse of :meth:`couple` in its first argument."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor, temb: torch.Tensor | None = None) -> torch.Tensor:
        """(B, C, D, H, W) -> (B, C, D, H, W)."""
        c, u = _halves(x, self.swap)
        return _join(c, self.couple(u, self.fn(c, temb)), self.swap)

    def inverse(self, y: torch.Tensor, temb: torch.Tensor | None = None) -> torch.Tensor:
        """Exact inverse of :meth:`forward`."""
        c, u = _halves(y, self.swap)
        return _join(c, self.uncouple(u, self.fn(c, temb)), self.swap)

    def inverse_with_graph(self, y: torch.Tensor, temb: torch.Tensor | None = None):
        """Reconstruct the input and rebuild the forward graph from it with one ``fn`` call.

        Returns ``(leaves, recomputed, assemble)``: grad-requiring leaves ``(x_c, x_u)``, the
        recomputed outputs (a graph from the leaves, ``temb`` and the parameters), and a function
        joining per-leaf tensors (values or gradients) into the op's inputs.
        """
        c, y_u = _halves(y.detach(), self.swap)
        c = c.detach().requires_grad_(True)
        out = self.fn(c, temb)
        u = self.uncouple(y_u, out.detach()).requires_grad_(True)
        recomputed = _join(c, self.couple(u, out), self.swap)
        return (c, u), (recomputed,), lambda parts: (_join(parts[0], parts[1], self.swap),)


class AdditiveCoupling(OneSidedCoupling):
    """``y_c = x_c``, ``y_u = x_u + F(x_c, temb)`` with ``F`` a :class:`CouplingNet`.

    Volume preserving; inverse ``x_u = y_u - F(y_c, temb)``. Two couplings with ``swap`` False
    then True update every channel once.
    """

    def __init__(self, channels: int, temb_dim: int | None = None, *, hidden_channels: int | None = None,
                 norm_groups: int = 8, dropout: float = 0.0, swap: bool = False, zero_init: bool = True) -> None:
        super().__init__()
        nc, nu = _half_sizes(channels, swap)
        self.swap = swap
        self.net = CouplingNet(nc, nu, hidden_channels or channels, temb_dim, norm_groups, dropout, zero_init)

    def fn(self, c: torch.Tensor, temb: torch.Tensor | None) -> torch.Tensor:
        """``F(x_c, temb)``."""
        return self.net(c, temb)

    def couple(self, u: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """``u + F``, in ``u``'s dtype (float32 state under autocast)."""
        return u + out.to(u.dtype)

    def uncouple(self, y_u: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """``y_u - F``."""
        return y_u - out.to(y_u.dtype)


class AffineCoupling(OneSidedCoupling):
    """``y_u = x_u * exp(s) + b`` with ``(s, b) = F(x_c, temb)`` and ``s`` soft-clamped to ``(-bound, bound)``.

    ``s = bound * tanh(raw / bound)`` keeps every per-block scale within ``exp(+-bound)``, so the
    inverse ``x_u = (y_u - b) * exp(-s)`` never divides by a tiny number.
    """

    def __init__(self, channels: int, temb_dim: int | None = None, *, hidden_channels: int | None = None,
                 norm_groups: int = 8, dropout: float = 0.0, swap: bool = False, zero_init: bool = True,
                 scale_bound: float = 2.0) -> None:
        super().__init__()
        nc, nu = _half_sizes(channels, swap)
        if scale_bound <= 0:
            raise VoxdiffError(f"affine scale_bound must be > 0, got {scale_bound}")
        self.swap = swap
        self.scale_bound = float(scale_bound)
        self.net = CouplingNet(nc, 2 * nu, hidden_channels or channels, temb_dim, norm_groups, dropout, zero_init)

    def fn(self, c: torch.Tensor, temb: torch.Tensor | None) -> torch.Tensor:
        """Raw ``(log-scale, shift)`` stacked on channels."""
        return self.net(c, temb)

    def _scale_shift(self, out: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        raw, shift = out.to(dtype).chunk(2, dim=1)
        return self.scale_bound * torch.tanh(raw / self.scale_bound), shift

    def couple(self, u: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """``u * exp(s) + b``."""
        log_s, shift = self._scale_shift(out, u.dtype)
        return u * torch.exp(log_s) + shift

    def uncouple(self, y_u: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """``(y_u - b) * exp(-s)``."""
        log_s, shift = self._scale_shift(out, y_u.dtype)
        return (y_u - shift) * torch.exp(-log_s)


class InvertibleAttention(OneSidedCoupling):
    """Additive coupling whose function is voxel self-attention: ``y_u = x_u + Attn(norm(x_c), temb)``.

    Multi-head attention over all ``D*H*W`` voxels of the conditioning half via
    ``scaled_dot_product_attention`` (quadratic in voxels: use it at low-resolution levels).
    The timestep modulates the normalised input (scale/shift) before the q/k/v projections.
    """

    def __init__(self, channels: int, temb_dim: int | None = None, *, num_heads: int = 4, norm_groups: int = 8,
                 swap: bool = False, zero_init: bool = True) -> None:
        super().__init__()
        nc, nu = _half_sizes(channels, swap)
        self.swap = swap
        self.heads = max(1, min(int(num_heads), nc))
        self.head_dim = math.ceil(nc / self.heads)
        inner = self.heads * self.head_dim
        self.norm = nn.GroupNorm(group_count(nc, norm_groups), nc, eps=1e-6)
        self.film = _film(temb_dim, nc)
        self.qkv = nn.Conv3d(nc, 3 * inner, 1)
        self.proj = nn.Conv3d(inner, nu, 1)
        if zero_init:
            nn.init.zeros_(self.proj.weight)
            nn.init.zeros_(self.proj.bias)

    def fn(self, c: torch.Tensor, temb: torch.Tensor | None) -> torch.Tensor:
        """Attention of the conditioning half: (B, C_c, D, H, W) -> (B, C_u, D, H, W)."""
        b, _, *spatial = c.shape
        h = _apply_film(self.film, self.norm(c), temb)
        qkv = self.qkv(h).reshape(b, 3, self.heads, self.head_dim, -1).transpose(-1, -2)
        out = F.scaled_dot_product_attention(qkv[:, 0], qkv[:, 1], qkv[:, 2])  # (B, heads, N, head_dim)
        out = out.transpose(-1, -2).reshape(b, self.heads * self.head_dim, *spatial)
        return self.proj(out)

    couple = AdditiveCoupling.couple
    uncouple = AdditiveCoupling.uncouple


def haar_matrix_3d(dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> torch.Tensor:
    """The orthonormal 8x8 3D Haar matrix ``kron(h, h, h)``, ``h = [[1, 1], [1, -1]] / sqrt(2)``.

    Columns index the 2x2x2 sub-voxel ``(p, q, r)`` as ``4p + 2q + r``; row 0 is the low-pass
    (block sum / sqrt(8)), the other rows are the 7 detail bands.
    """
    h = torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=torch.float64) / math.sqrt(2.0)
    return torch.kron(torch.kron(h, h), h).to(device=device, dtype=dtype)


class _OrthogonalResample(InvertibleModule):
    """Shared machinery: a per-channel orthogonal 8x8 matrix ``M_c = Haar @ expm(S_c - S_c^T)``.

    The skew-symmetric generator starts at zero (``M = Haar``); ``expm`` of a skew-symmetric
    matrix is orthogonal, so the inverse is the transpose to rounding precision.
    """

    def __init__(self, channels: int, learnable: bool = True) -> None:
        super().__init__()
        self.channels = int(channels)
        self.generator = nn.Parameter(torch.zeros(self.channels, 8, 8), requires_grad=learnable)

    @property
    def deterministic(self) -> bool:
        """Never random."""
        return True

    def matrix(self) -> torch.Tensor:
        """(C, 8, 8) orthogonal mixing matrices, rows = output bands, columns = sub-voxels."""
        skew = self.generator - self.generator.transpose(-1, -2)
        # Built in float64 on every call (8x8, free): a float32 buffer cast to float64 would not be orthogonal.
        return haar_matrix_3d(skew.dtype, skew.device) @ torch.linalg.matrix_exp(skew)

    def _down(self, x: torch.Tensor, transpose: bool) -> torch.Tensor:
        if x.ndim != 5 or x.shape[1] != self.channels or any(s % 2 for s in x.shape[2:]):
            raise VoxdiffError(f"invertible downsampling needs (B, {self.channels}, D, H, W) with even sizes, "
                               f"got {tuple(x.shape)}")
        # The mixing is cheap and must stay exact: keep it out of autocast.
        with torch.autocast(x.device.type, enabled=False):
            m = self.matrix().to(x.dtype)
            if transpose:
                m = m.transpose(-1, -2)
            xs = rearrange(x, "b c (d p) (h q) (w r) -> b c (p q r) d h w", p=2, q=2, r=2)
            y = torch.einsum("cij,bcjdhw->bcidhw", m, xs)
        return rearrange(y, "b c k d h w -> b (c k) d h w")

    def _up(self, y: torch.Tensor, transpose: bool) -> torch.Tensor:
        if y.ndim != 5 or y.shape[1] != 8 * self.channels:
            raise VoxdiffError(f"invertible upsampling needs (B, {8 * self.channels}, D, H, W), got {tuple(y.shape)}")
        with torch.autocast(y.device.type, enabled=False):
            m = self.matrix().to(y.dtype)
            if transpose:
                m = m.transpose(-1, -2)
            ys = rearrange(y, "b (c k) d h w -> b c k d h w", k=8)
            x = torch.einsum("cij,bcjdhw->bcidhw", m, ys)
        return rearrange(x, "b c (p q r) d h w -> b c (d p) (h q) (w r)", p=2, q=2, r=2)


class InvertibleDownsample(_OrthogonalResample):
    """Space-to-channel by 2 per axis, then a learnable orthogonal 8x8 mix per input channel.

    (B, C, D, H, W) -> (B, 8C, D/2, H/2, W/2); output channel ``8c + k`` is band ``k`` of input
    channel ``c``. Norm preserving; :meth:`inverse` is the exact upsampling.
    """

    def forward(self, x: torch.Tensor, temb: torch.Tensor | None = None) -> torch.Tensor:
        """(B, C, D, H, W) -> (B, 8C, D/2, H/2, W/2)."""
        return self._down(x, transpose=False)

    def inverse(self, y: torch.Tensor, temb: torch.Tensor | None = None) -> torch.Tensor:
        """(B, 8C, d, h, w) -> (B, C, 2d, 2h, 2w)."""
        return self._up(y, transpose=True)


class InvertibleUpsample(_OrthogonalResample):
    """Channel-to-space: (B, 8C, d, h, w) -> (B, C, 2d, 2h, 2w) with its own orthogonal mix (Haar at init).

    ``channels`` is the fine-level count ``C``. At init it is the exact inverse of a fresh
    :class:`InvertibleDownsample`; it trains independently of the encoder's one.
    """

    def forward(self, y: torch.Tensor, temb: torch.Tensor | None = None) -> torch.Tensor:
        """(B, 8C, d, h, w) -> (B, C, 2d, 2h, 2w)."""
        return self._up(y, transpose=True)

    def inverse(self, x: torch.Tensor, temb: torch.Tensor | None = None) -> torch.Tensor:
        """(B, C, D, H, W) -> (B, 8C, D/2, H/2, W/2)."""
        return self._down(x, transpose=False)


class ChannelSplit(InvertibleOp):
    """Split off the first ``skip_channels`` channels for a UNet skip path: ``x -> (skip, rest)``."""

    n_in, n_out = 1, 2

    def __init__(self, skip_channels: int) -> None:
        super().__init__()
        self.skip_channels = int(skip_channels)

    @property
    def deterministic(self) -> bool:
        """Never random."""
        return True

    def forward(self, x: torch.Tensor, temb: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, C, ...) -> ((B, skip, ...), (B, C - skip, ...))."""
        return x[:, :self.skip_channels], x[:, self.skip_channels:]

    def inverse(self, skip: torch.Tensor, rest: torch.Tensor, temb: torch.Tensor | None = None) -> torch.Tensor:
        """Concatenate back."""
        return torch.cat([skip, rest], dim=1)


class ChannelMerge(InvertibleOp):
    """Re-join a skip path in the decoder: ``(skip, x) -> cat([skip, x])``."""

    n_in, n_out = 2, 1

    def __init__(self, skip_channels: int) -> None:
        super().__init__()
        self.skip_channels = int(skip_channels)

    @property
    def deterministic(self) -> bool:
        """Never random."""
        return True

    def forward(self, skip: torch.Tensor, x: torch.Tensor, temb: torch.Tensor | None = None) -> torch.Tensor:
        """((B, skip, ...), (B, C', ...)) -> (B, skip + C', ...)."""
        return torch.cat([skip, x], dim=1)

    def inverse(self, y: torch.Tensor, temb: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Split back into (skip, x)."""
        return y[:, :self.skip_channels], y[:, self.skip_channels:]
