"""Distribution checks of synthetic volumes (no labels needed): head mask, tissue means, W1, diversity.

Synthetic volumes carry no labels, so every check uses masks computed the same way from each
volume's own intensities (benchmarks/synthesis_quality.py and ``voxdiff demo --task synthesize``):

* head: voxels above the Otsu threshold of the volume (largest connected component, holes
  filled); its volume in litres and the intensities inside it;
* tissue means: a 3-class 1-D k-means on head intensities, classes sorted by mean (dark =
  CSF/background-like, middle = GM-like, bright = WM-like);
* the 1-Wasserstein distance between two head-intensity samples;
* diversity: mean pairwise RMSE within a group, and each volume's RMSE to its nearest volume of
  another group (a memorisation check against training cases).
"""

from __future__ import annotations

import numpy as np

__all__ = ["otsu", "head_mask", "kmeans_1d", "wasserstein_1d", "describe", "pairwise_rmse", "nearest_rmse"]


def otsu(x: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of a 1-D sample."""
    hist, edges = np.histogram(x, bins=bins)
    p = hist / max(hist.sum(), 1)
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(p)
    m = np.cumsum(p * centres)
    mt = m[-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mt * w0 - m) ** 2 / (w0 * (1 - w0))
    return float(centres[np.nanargmax(between)])


def head_mask(vol: np.ndarray) -> np.ndarray:
    """Otsu foreground, largest connected component, holes filled."""
    from scipy import ndimage

    fg = vol > otsu(vol.ravel())
    lab, n = ndimage.label(fg)
    if n > 1:
        sizes = ndimage.sum(fg, lab, range(1, n + 1))
        fg = lab == (1 + int(np.argmax(sizes)))
    return ndimage.binary_fill_holes(fg)


def kmeans_1d(x: np.ndarray, k: int = 3, iters: int = 50) -> np.ndarray:
    """Sorted cluster means of a 1-D k-means started at quantiles (deterministic)."""
    c = np.quantile(x, (np.arange(k) + 0.5) / k)
    for _ in range(iters):
        assign = np.abs(x[:, None] - c[None]).argmin(1)
        new = np.array([x[assign == j].mean() if (assign == j).any() else c[j] for j in range(k)])
        if np.allclose(new, c):
            break
        c = new
    return np.sort(c)


def wasserstein_1d(a: np.ndarray, b: np.ndarray, n: int = 2000) -> float:
    """1-Wasserstein distance between two 1-D samples (quantile functions)."""
    q = (np.arange(n) + 0.5) / n
    return float(np.abs(np.quantile(a, q) - np.quantile(b, q)).mean())


def describe(vols: list[np.ndarray], spacing_mm: float) -> list[dict]:
    """Per-volume statistics: head volume, tissue means, head intensity sample."""
    rows = []
    for v in vols:
        m = head_mask(v)
        vals = v[m]
        rows.append({"head_litres": float(m.sum() * spacing_mm ** 3 / 1e6), "tissue_means": kmeans_1d(vals).tolist(),
                     "head_mean": float(vals.mean()), "values": vals})
    return rows


def pairwise_rmse(vols: list[np.ndarray]) -> float:
    """Mean RMSE over all pairs of a group."""
    d = [float(np.sqrt(((a - b) ** 2).mean())) for i, a in enumerate(vols) for b in vols[i + 1:]]
    return float(np.mean(d)) if d else float("nan")


def nearest_rmse(vols: list[np.ndarray], pool: list[np.ndarray]) -> list[float]:
    """For each volume, the RMSE to its nearest volume of ``pool``."""
    return [min(float(np.sqrt(((v - p) ** 2).mean())) for p in pool) for v in vols]
