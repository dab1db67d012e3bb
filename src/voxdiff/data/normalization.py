"""Per-role intensity normalisation of a case from config specs, with stored, invertible parameters.

A spec is a dict per role, e.g.::

    {"source": {"mode": "percentile", "lower": 0.5, "upper": 99.5},   # fitted on each case
     "target": {"mode": "same_as", "role": "source"},                 # PET pairs in the same units
     "label": {"mode": "none"}}

Modes are those of :func:`voxdiff.intensity.make_normalizer` (``percentile``, ``zscore``,
``window``, ``range``) plus ``none`` (labels, already-normalised data) and ``same_as`` (reuse
another role's scaler of the same case, so that a prediction inverts to the target's units
using only the source). ``"per": "dataset"`` fits one scaler over the training cases with
:func:`fit_dataset_normalizers` instead of one per case; ``"nonzero": true`` fits on non-zero
voxels only (skull-stripped MRI).
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np

from voxdiff.errors import VoxdiffError
from voxdiff.intensity import Normalizer, make_normalizer, normalizer_from_dict
from voxdiff.io import Volume, load_volume

__all__ = [
    "FITTED_MODES",
    "resolve_normalization",
    "case_normalizers",
    "fit_dataset_normalizers",
    "normalizers_to_dict",
    "normalizers_from_dict",
]

#: Modes whose parameters come from data (the others are fixed by the spec).
FITTED_MODES = ("percentile", "zscore")
_FIXED_MODES = ("window", "range")
_ALL_MODES = FITTED_MODES + _FIXED_MODES + ("none", "same_as")
_DEFAULT_IMAGE_SPEC = {"mode": "percentile", "lower": 0.5, "upper": 99.5}


def resolve_normalization(
    normalization: Mapping[str, Mapping[str, Any]] | None,
    roles: Sequence[str],
    label_roles: Sequence[str] = ("label",),
) -> dict[str, dict[str, Any]]:
    """Check the specs and fill defaults: labels ``none``, images per-case percentile 0.5-99.5.

    Raises a clear error for an unknown mode, a spec for a role that is not loaded, a label
    role given an intensity mode, or a ``same_as`` chain that does not end in a real scaler.
    """
    normalization = dict(normalization or {})
    unknown = [r for r in normalization if r not in roles]
    if unknown:
        raise VoxdiffError(f"normalization names role(s) {', '.join(unknown)} that are not among the roles {', '.join(roles)}")
    out: dict[str, dict[str, Any]] = {}
    for role in roles:
        default = {"mode": "none"} if role in label_roles else dict(_DEFAULT_IMAGE_SPEC)
        spec = dict(normalization.get(role) or default)
        mode = spec.setdefault("mode", "percentile")
        if mode not in _ALL_MODES:
            raise VoxdiffError(f"normalization of '{role}': unknown mode '{mode}' (use {', '.join(_ALL_MODES)})")
        if role in label_roles and mode != "none":
            raise VoxdiffError(f"normalization of label role '{role}' must be 'none' (labels keep their integer values), got '{mode}'")
        per = spec.setdefault("per", "case")
        if per not in ("case", "dataset"):
            raise VoxdiffError(f"normalization of '{role}': 'per' must be 'case' or 'dataset', got '{per}'")
        if mode == "same_as" and spec.get("role") not in roles:
            raise VoxdiffError(f"normalization of '{role}': same_as needs 'role' naming one of {', '.join(roles)}, got {spec.get('role')!r}")
        if mode == "window" and not {"center", "width"} <= spec.keys():
            raise VoxdiffError(f"normalization of '{role}': window mode needs 'center' and 'width'")
        if mode == "range" and not {"lo", "hi"} <= spec.keys():
            raise VoxdiffError(f"normalization of '{role}': range mode needs 'lo' and 'hi'")
        out[role] = spec
    for role in roles:
        seen = [role]
        spec = out[role]
        while spec["mode"] == "same_as":
            ref = spec["role"]
            if ref in seen:
                raise VoxdiffError(f"normalization: same_as loop {' -> '.join(seen + [ref])}")
            seen.append(ref)
            spec = out[ref]
        if spec["mode"] == "none" and len(seen) > 1:
            raise VoxdiffError(f"normalization of '{role}': same_as '{seen[-1]}', which has no scaler (mode none)")
    return out


def _maker_spec(spec: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in spec.items() if k not in ("per", "nonzero", "role")}


def _fit(spec: Mapping[str, Any], array: np.ndarray, role: str) -> Normalizer:
    mask = (array != 0) if spec.get("nonzero") else None
    if mask is not None and not mask.any():
        raise VoxdiffError(f"normalization of '{role}': 'nonzero' was asked for but the volume is all zero")
    return make_normalizer(_maker_spec(spec), array, mask)


def case_normalizers(
    volumes: Mapping[str, Volume | np.ndarray],
    normalization: Mapping[str, Mapping[str, Any]] | None,
    *,
    label_roles: Sequence[str] = ("label",),
    dataset_normalizers: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Normalizer | None]:
    """The normaliser of each role of one case (``None`` for ``none``), fitted as the specs say.

    ``volumes`` may hold a subset of the specs' roles (at inference only the source exists);
    roles it lacks are skipped unless another role is ``same_as`` them and they are fitted per
    case. ``dataset_normalizers`` is the output of :func:`fit_dataset_normalizers`.
    """
    specs = resolve_normalization(normalization, list(dict.fromkeys([*(normalization or {}), *volumes])), label_roles)
    arrays = {r: (v.array if isinstance(v, Volume) else np.asarray(v, dtype=np.float32)) for r, v in volumes.items()}
    out: dict[str, Normalizer | None] = {}

    def get(role: str, asked_by: str) -> Normalizer | None:
        if role in out:
            return out[role]
        spec = specs[role]
        mode = spec["mode"]
        if mode == "none":
            norm = None
        elif mode == "same_as":
            norm = get(spec["role"], role)
        elif spec["per"] == "dataset" and mode in FITTED_MODES:
            stored = (dataset_normalizers or {}).get(role)
            if stored is None:
                raise VoxdiffError(f"normalization of '{role}' is per dataset but no fitted parameters were given (run fit_dataset_normalizers on the training cases)")
            norm = normalizer_from_dict(stored)
        elif mode in _FIXED_MODES:
            norm = make_normalizer(_maker_spec(spec), np.zeros(1, np.float32))
        else:
            if role not in arrays:
                raise VoxdiffError(f"normalization of '{asked_by}' needs the '{role}' volume of the case, which was not given")
            try:
                norm = _fit(spec, arrays[role], role)
            except VoxdiffError as exc:
                # A volume that cannot be normalised (e.g. constant): name its file.
                source = getattr(volumes[role], "path", None)
                if source is None or str(source) in str(exc):
                    raise
                raise VoxdiffError(f"{source} ({role}): {exc}") from exc
        out[role] = norm
        return norm

    for role in volumes:
        get(role, role)
    return out


def fit_dataset_normalizers(
    cases: Sequence[Any],
    normalization: Mapping[str, Mapping[str, Any]] | None,
    *,
    label_roles: Sequence[str] = ("label",),
    max_voxels_per_case: int = 200_000,
    volumes: Sequence[Mapping[str, Volume]] | None = None,
) -> dict[str, dict[str, Any]]:
    """Fit every ``"per": "dataset"`` role once over ``cases`` (the training cases only).

    Each case contributes an evenly strided sample of at most ``max_voxels_per_case`` voxels
    (deterministic, and bounded memory for hundreds of volumes). Returns ``{role: params}``
    to store with the model and pass back as ``dataset_normalizers``. ``volumes`` may give
    already-loaded volumes (one mapping per case) to avoid reading files again.
    """
    specs = dict(normalization or {})
    wanted = [r for r, s in specs.items() if s and s.get("per") == "dataset" and s.get("mode", "percentile") in FITTED_MODES]
    if not wanted:
        return {}
    if not cases:
        raise VoxdiffError("fit_dataset_normalizers needs at least one training case")
    resolve_normalization(specs, list(specs), label_roles)
    out: dict[str, dict[str, Any]] = {}
    for role in wanted:
        samples = []
        for i, case in enumerate(cases):
            vol = volumes[i][role] if volumes is not None else load_volume(case.path(role), role=f"{case.id} {role}")
            flat = vol.array.ravel()
            if specs[role].get("nonzero"):
                flat = flat[flat != 0]
            stride = max(1, math.ceil(flat.size / max_voxels_per_case))
            samples.append(np.asarray(flat[::stride], dtype=np.float32))
        pooled = np.concatenate(samples)
        if pooled.size == 0:
            raise VoxdiffError(f"normalization of '{role}': the training cases hold no voxel to fit on")
        out[role] = make_normalizer(_maker_spec(specs[role]), pooled).to_dict()
    return out


def normalizers_to_dict(normalizers: Mapping[str, Normalizer | None]) -> dict[str, dict[str, Any] | None]:
    """Plain-data form of :func:`case_normalizers`' output (for JSON, checkpoints, output sidecars)."""
    return {r: (None if n is None else n.to_dict()) for r, n in normalizers.items()}


def normalizers_from_dict(data: Mapping[str, Mapping[str, Any] | None]) -> dict[str, Normalizer | None]:
    """Inverse of :func:`normalizers_to_dict`."""
    return {r: (None if d is None else normalizer_from_dict(d)) for r, d in data.items()}
