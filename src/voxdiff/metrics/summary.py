"""Summaries of per-case metric rows: mean and std over cases of the finite values."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

__all__ = ["summarize"]


def summarize(rows: Iterable[Mapping[str, float]], keys: Sequence[str] | None = None) -> dict[str, dict[str, float]]:
    """Mean and standard deviation (ddof=0) of each metric over cases.

    Non-finite values (PSNR ``inf`` of identical volumes, HD95 NaN of a missed structure)
    are left out of mean/std; ``n`` counts the finite values used and ``n_nonfinite`` the rest.
    """
    rows = list(rows)
    if keys is None:
        keys = list(dict.fromkeys(k for r in rows for k in r))
    out: dict[str, dict[str, float]] = {}
    for key in keys:
        values = np.array([float(r[key]) for r in rows if key in r], dtype=np.float64)
        finite = values[np.isfinite(values)]
        out[key] = {
            "mean": float(finite.mean()) if finite.size else math.nan,
            "std": float(finite.std()) if finite.size else math.nan,
            "n": int(finite.size),
            "n_nonfinite": int(values.size - finite.size),
        }
    return out
