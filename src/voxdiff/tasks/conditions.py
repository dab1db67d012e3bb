"""Scalar conditions (e.g. the dose of a low-count PET scan) given to a network beside its images.

Each condition enters the network as two constant channels: its (transformed) value and a
"given" flag. Training hides a condition from a share ``dropout`` of the items (value 0, flag 0),
so one model serves both with the value (``--condition dose=5``) and without it (blind: the network
estimates it from the image, as a model trained without the condition does). Constant channels
survive the pixel puzzle and sliding windows unchanged, so no backbone needs to know about them.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import torch

from voxdiff.errors import VoxdiffError

#: How a condition's value is fed: ``log`` (natural log; for positive quantities spanning decades,
#: such as a dose fraction) or ``linear``.
TRANSFORMS = ("log", "linear")


class ScalarConditions:
    """The scalar conditions a model takes: ``spec`` maps name -> transform; ``dropout`` as above."""

    def __init__(self, spec: Mapping[str, str] | None, dropout: float = 0.0) -> None:
        self.spec = dict(spec or {})
        for name, transform in self.spec.items():
            if transform not in TRANSFORMS:
                raise VoxdiffError(f"model.conditions.{name} must be one of {', '.join(TRANSFORMS)}, got {transform!r}")
        if not 0.0 <= float(dropout) < 1.0:
            raise VoxdiffError(f"model.condition_dropout must lie in [0, 1), got {dropout}")
        if dropout and not self.spec:
            raise VoxdiffError("model.condition_dropout is set but model.conditions names no condition")
        self.dropout = float(dropout)

    @property
    def names(self) -> tuple[str, ...]:
        """Condition names, in the order of the value vector."""
        return tuple(self.spec)

    @property
    def channels(self) -> int:
        """Network input channels the conditions add (value + given flag each)."""
        return 2 * len(self.spec)

    @property
    def optional(self) -> bool:
        """Whether the model was trained to work without the conditions (dropout > 0)."""
        return self.dropout > 0

    def _feed(self, name: str, value: float, where: str) -> float:
        if not math.isfinite(value):
            raise VoxdiffError(f"{where}: condition '{name}' must be a finite number, got {value}")
        if self.spec[name] == "log":
            if value <= 0:
                raise VoxdiffError(f"{where}: condition '{name}' must be positive (it is fed as a log), got {value:g}")
            return math.log(value)
        return value

    def encode(self, values: torch.Tensor | None, batch: int, *, generator: Any = None,
               drop: bool = False, where: str = "conditions") -> torch.Tensor:
        """(B, n) raw values (None: none given) -> (B, 2n) network features; ``drop`` hides a random share.

        ``generator``: one generator, or one per item (item ``i`` then draws from ``generator[i]``,
        so the draws do not depend on how a batch is split across processes).
        """
        n = len(self.spec)
        feats = torch.zeros(batch, 2 * n)
        if values is None or n == 0:
            return feats
        values = values.reshape(batch, n).double()
        for j, name in enumerate(self.names):
            feats[:, 2 * j] = torch.tensor([self._feed(name, float(v), where) for v in values[:, j]])
            feats[:, 2 * j + 1] = 1.0
        if drop and self.dropout > 0:
            if isinstance(generator, (list, tuple)):
                u = torch.cat([torch.rand(1, n, generator=g) for g in generator])
            else:
                u = torch.rand(batch, n, generator=generator)
            keep = (u >= self.dropout).float()
            feats = feats * keep.repeat_interleave(2, dim=1)
        return feats

    def maps(self, feats: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """(B, 2n) features -> constant channels (B, 2n, *spatial of ``like``) on its device and dtype."""
        b, spatial = like.shape[0], like.shape[2:]
        feats = feats.to(device=like.device, dtype=like.dtype)
        if feats.shape[0] != b:  # several samples per input volume share their input's conditions
            feats = feats.repeat_interleave(b // feats.shape[0], dim=0)
        return feats.reshape(b, -1, *([1] * len(spatial))).expand(b, feats.shape[1], *spatial)

    def vector(self, given: Mapping[str, Any] | None, model: str = "this model") -> torch.Tensor | None:
        """Validate user-given values (name -> number) into a (1, n) tensor, or None for a blind call."""
        given = dict(given or {})
        if not self.spec:
            if given:
                raise VoxdiffError(f"{model} takes no conditions, so no --condition {', '.join(given)}")
            return None
        unknown = [k for k in given if k not in self.spec]
        if unknown:
            raise VoxdiffError(f"{model} takes the condition(s) {', '.join(self.names)}, not {', '.join(unknown)}")
        if not given:
            if not self.optional:
                raise VoxdiffError(f"{model} was trained with {', '.join(self.names)} always given: pass "
                                   + " ".join(f"--condition {n}=VALUE" for n in self.names))
            return None
        missing = [n for n in self.names if n not in given]
        if missing:
            raise VoxdiffError(f"{model} needs every condition or none: missing {', '.join(missing)}")
        out = []
        for name in self.names:
            try:
                value = float(given[name])
            except (TypeError, ValueError):
                raise VoxdiffError(f"--condition {name}: not a number: {given[name]!r}") from None
            self._feed(name, value, f"--condition {name}")
            out.append(value)
        return torch.tensor([out], dtype=torch.float64)


def parse_conditions(items: list[str] | None) -> dict[str, float]:
    """``["dose=5", ...]`` (a repeatable ``--condition NAME=VALUE`` option) -> ``{"dose": 5.0}``."""
    out: dict[str, float] = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or not name:
            raise VoxdiffError(f"--condition must be NAME=VALUE (e.g. dose=5), got '{item}'")
        if name in out:
            raise VoxdiffError(f"--condition {name} is given twice")
        try:
            out[name] = float(value)
        except ValueError:
            raise VoxdiffError(f"--condition {name}: not a number: '{value}'") from None
    return out
