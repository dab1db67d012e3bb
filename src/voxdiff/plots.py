"""Pictures people would rather look at than read: montages and training curves (PNG)."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from voxdiff.io import atomic_write_bytes


def _figure_bytes(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


def montage(panels: dict[str, np.ndarray], path: str | Path, *, title: str | None = None,
            ranges: dict[str, tuple[float, float]] | None = None, cmaps: dict[str, str] | None = None,
            center: tuple[int, int, int] | None = None) -> Path:
    """Write a PNG of three orthogonal centre slices (rows) of each 3D volume (columns).

    ``ranges`` fixes the grey-level window per panel (default: the 1st-99.5th percentile of the
    first panel for every panel not named in ``ranges``, so intensities compare across columns).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(panels)
    first = np.asarray(panels[names[0]], dtype=np.float32)
    c = center or tuple(s // 2 for s in first.shape)
    lo, hi = np.percentile(first, [1, 99.5])
    ranges = ranges or {}
    cmaps = cmaps or {}
    fig, axes = plt.subplots(3, len(names), figsize=(2.6 * len(names), 7.6), squeeze=False)
    for j, name in enumerate(names):
        vol = np.asarray(panels[name], dtype=np.float32)
        vmin, vmax = ranges.get(name, (lo, hi))
        slices = (vol[:, :, c[2]], vol[:, c[1], :], vol[c[0], :, :])
        for i, sl in enumerate(slices):
            ax = axes[i, j]
            ax.imshow(np.rot90(sl), cmap=cmaps.get(name, "gray"), vmin=vmin, vmax=vmax, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(name, fontsize=10)
    if title:
        fig.suptitle(title, fontsize=10)
    data = _figure_bytes(fig)
    plt.close(fig)
    return atomic_write_bytes(path, data)


def training_curves(train_csv: str | Path, val_csv: str | Path | None, path: str | Path) -> Path | None:
    """Plot the training loss (and validation metrics, if logged) against step as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def read(p):
        if p is None or not Path(p).exists():
            return []
        with open(p, newline="") as f:
            return list(csv.DictReader(f))

    train, val = read(train_csv), read(val_csv)
    if not train:
        return None
    metric_keys = [k for k in (val[0] if val else {}) if k != "step"]
    fig, axes = plt.subplots(1, 1 + bool(metric_keys), figsize=(5.5 * (1 + bool(metric_keys)), 3.8), squeeze=False)
    steps = np.array([float(r["step"]) for r in train])
    loss = np.array([float(r["loss"]) for r in train])
    ax = axes[0, 0]
    ax.plot(steps, loss, lw=0.8, alpha=0.5, label="loss")
    if len(loss) >= 10:
        k = max(5, len(loss) // 20)
        smooth = np.convolve(loss, np.ones(k) / k, mode="valid")
        ax.plot(steps[k - 1:], smooth, lw=1.5, label=f"loss (mean of {k})")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.legend()
    ax.set_title("training loss")
    if metric_keys:
        ax = axes[0, 1]
        vs = [float(r["step"]) for r in val]
        for key in metric_keys:
            if "psnr" in key or "dice" in key:
                ax.plot(vs, [float(r[key]) for r in val], marker="o", label=key)
        ax.set_xlabel("step")
        ax.legend()
        ax.set_title("validation")
    data = _figure_bytes(fig)
    plt.close(fig)
    return atomic_write_bytes(path, data)
