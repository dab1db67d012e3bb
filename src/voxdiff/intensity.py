"""Intensity normalisation with stored parameters and an exact inverse.

Every normaliser maps input units to the network range and back. ``fit`` computes its
parameters from one volume (optionally inside a mask), ``to_dict``/``from_dict`` store them
(in checkpoints and beside outputs), and ``inverse(forward(x)) == x`` holds exactly up to
floating-point rounding wherever ``forward`` did not clip.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from voxdiff.errors import VoxdiffError

ArrayLike = Any  # np.ndarray or torch.Tensor


def _clip(x: ArrayLike, lo: float, hi: float) -> ArrayLike:
    return torch.clamp(x, lo, hi) if isinstance(x, torch.Tensor) else np.clip(x, lo, hi)


@dataclass
class RangeScaler:
    """Linear map of ``[lo, hi]`` onto ``[out_lo, out_hi]`` (default [-1, 1]), optional clip.

    The fixed-window form covers CT HU windows and fixed PET count ranges.
    """

    lo: float
    hi: float
    out_lo: float = -1.0
    out_hi: float = 1.0
    clip: bool = True
    kind: str = field(default="range", init=False)

    def __post_init__(self) -> None:
        if not self.hi > self.lo:
            raise VoxdiffError(f"intensity range needs hi > lo, got lo={self.lo}, hi={self.hi} (constant volume?)")

    @property
    def _scale(self) -> float:
        return (self.out_hi - self.out_lo) / (self.hi - self.lo)

    def forward(self, x: ArrayLike) -> ArrayLike:
        """Input units -> network range."""
        if self.clip:
            x = _clip(x, self.lo, self.hi)
        return (x - self.lo) * self._scale + self.out_lo

    def inverse(self, y: ArrayLike) -> ArrayLike:
        """Network range -> input units."""
        return (y - self.out_lo) / self._scale + self.lo

    def to_dict(self) -> dict:
        """Parameters as plain data."""
        return asdict(self)


def percentile_scaler(array: np.ndarray, lower: float = 0.5, upper: float = 99.5,
                      mask: np.ndarray | None = None, clip: bool = True) -> RangeScaler:
    """Fit a :class:`RangeScaler` to the ``lower``/``upper`` percentiles of ``array`` (in ``mask``)."""
    values = array[mask > 0] if mask is not None else array
    if values.size == 0:
        raise VoxdiffError("percentile scaling: the mask selects no voxel")
    lo, hi = np.percentile(values, [lower, upper])
    if hi <= lo:
        lo, hi = float(values.min()), float(values.max())
    return RangeScaler(float(lo), float(hi), clip=clip)


def window_scaler(center: float, width: float) -> RangeScaler:
    """A CT-style window (e.g. center 40, width 400 HU) mapped to [-1, 1] with clipping."""
    return RangeScaler(center - width / 2.0, center + width / 2.0, clip=True)


@dataclass
class ZScore:
    """``(x - mean) / std``; parameters from the whole volume or a mask (e.g. foreground)."""

    mean: float
    std: float
    kind: str = field(default="zscore", init=False)

    def __post_init__(self) -> None:
        if not self.std > 0:
            raise VoxdiffError("z-score needs a non-constant volume (std is 0)")

    @classmethod
    def fit(cls, array: np.ndarray, mask: np.ndarray | None = None) -> "ZScore":
        """Estimate mean and std from ``array`` (inside ``mask`` when given)."""
        values = array[mask > 0] if mask is not None else array
        return cls(float(values.mean()), float(values.std()))

    def forward(self, x: ArrayLike) -> ArrayLike:
        """Input units -> standardised."""
        return (x - self.mean) / self.std

    def inverse(self, y: ArrayLike) -> ArrayLike:
        """Standardised -> input units."""
        return y * self.std + self.mean

    def to_dict(self) -> dict:
        """Parameters as plain data."""
        return asdict(self)


Normalizer = RangeScaler | ZScore


def normalizer_from_dict(d: dict) -> Normalizer:
    """Rebuild a normaliser stored with :meth:`to_dict`."""
    d = dict(d)
    kind = d.pop("kind", "range")
    if kind == "range":
        return RangeScaler(**d)
    if kind == "zscore":
        return ZScore(**d)
    raise VoxdiffError(f"unknown intensity normaliser kind '{kind}'")


def make_normalizer(spec: dict, array: np.ndarray, mask: np.ndarray | None = None) -> Normalizer:
    """Build a normaliser from a config ``spec`` for one volume.

    ``{"mode": "percentile", "lower": 0.5, "upper": 99.5}``, ``{"mode": "zscore"}``,
    ``{"mode": "window", "center": 40, "width": 400}`` or ``{"mode": "range", "lo": 0, "hi": 1}``.
    """
    spec = dict(spec)
    mode = spec.pop("mode", "percentile")
    if mode == "percentile":
        return percentile_scaler(array, spec.get("lower", 0.5), spec.get("upper", 99.5), mask, spec.get("clip", True))
    if mode == "zscore":
        return ZScore.fit(array, mask)
    if mode == "window":
        return window_scaler(float(spec["center"]), float(spec["width"]))
    if mode == "range":
        return RangeScaler(float(spec["lo"]), float(spec["hi"]), clip=spec.get("clip", True))
    raise VoxdiffError(f"unknown intensity mode '{mode}' (use percentile, zscore, window or range)")
