"""Figures of docs/pet-simulation.md: reconstructions per dose, and noise power spectra.

``docs/figures/pet_simulation.png``: one IXI subject (T1, mu map, truth, full dose, 25 %, 5 %, 1 %,
NAC 5 %), one axial plane through a lesion. ``docs/figures/pet_noise_power.png``: radially averaged
2D noise power spectrum (per axial plane, inside the brain, averaged over planes) of the 5 % dose
noise in projection mode (low_5 - truth) and in image mode (low - full: white), each normalised to
its mean.

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/pet_simulation_figures.py
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def radial_nps(noise: np.ndarray, mask: np.ndarray, axis: int, spacing: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """(frequency in cycles/mm, radially averaged 2D noise power) over the planes normal to ``axis``."""
    noise = np.moveaxis(noise * mask, axis, 0)
    keep = np.moveaxis(mask, axis, 0).reshape(noise.shape[0], -1).mean(1) > 0.2   # planes well inside the brain
    planes = noise[keep]
    power = np.mean(np.abs(np.fft.fft2(planes - planes.mean(axis=(1, 2), keepdims=True))) ** 2, axis=0)
    fx = np.fft.fftfreq(planes.shape[1], spacing[0])
    fy = np.fft.fftfreq(planes.shape[2], spacing[1])
    fr = np.hypot(fx[:, None], fy[None, :])
    edges = np.linspace(0, min(fx.max(), fy.max()), 25)
    which = np.digitize(fr.ravel(), edges) - 1
    ok = (which >= 0) & (which < len(edges) - 1)
    sums = np.bincount(which[ok], power.ravel()[ok], minlength=len(edges) - 1)
    counts = np.bincount(which[ok], minlength=len(edges) - 1)
    centres = 0.5 * (edges[1:] + edges[:-1])
    nps = sums / np.maximum(counts, 1)
    return centres, nps / nps.mean()


def main() -> None:
    """Simulate one subject in both modes and write the two figures."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from voxdiff.io import load_volume
    from voxdiff.paths import shared_data_dir
    from voxdiff.sim.pet import head_mask_from_image, simulate_pet
    from voxdiff.sim.physics import ProjectionSettings, axial_axis, simulate_projection_pet

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--case", default="IXI012-HH-1211")
    ap.add_argument("--out-dir", type=Path, default=Path("docs/figures"))
    args = ap.parse_args()
    root = shared_data_dir() / "ixi-t1-2mm"
    labels = load_volume(root / "labels" / f"{args.case}.nii.gz")
    t1 = load_volume(root / "t1" / f"{args.case}.nii.gz")
    res = simulate_projection_pet(labels, case=args.case, seed=0, t1=t1,
                                  settings=ProjectionSettings(lesion_free_fraction=0.0))
    im = {k: v.array for k, v in res.images.items()}
    ax = axial_axis(labels.affine)
    lesion = res.lesions["lesions"][0] if res.lesions["lesions"] else None
    k = int(round(lesion["centre_voxel"][ax])) if lesion else labels.shape[ax] // 2

    def plane(a: np.ndarray) -> np.ndarray:
        return np.rot90(np.take(a, k, axis=ax))

    panels = [("T1", t1.array, "gray", None), ("mu map (1/cm)", im["mumap"], "gray", (0, 0.16)),
              ("truth (noise-free OSEM)", im["truth"], "magma", None), ("full dose", im["full"], "magma", None),
              ("25 %", im["low_25"], "magma", None), ("5 %", im["low_5"], "magma", None),
              ("1 %", im["low_1"], "magma", None), ("NAC 5 %", im["nac_low_5"], "magma", "nac")]
    vmax = float(np.percentile(im["truth"][labels.array > 0], 99.5)) * 1.2
    fig, axes = plt.subplots(2, 4, figsize=(13, 7))
    for axis_, (title, arr, cmap, lim) in zip(axes.ravel(), panels):
        if lim == "nac":
            lim = (0, float(np.percentile(arr[labels.array > 0], 99.5)) * 1.2)
        lo, hi = lim if lim is not None else ((0, vmax) if cmap == "magma" else (None, None))
        axis_.imshow(plane(arr), cmap=cmap, vmin=lo, vmax=hi)
        axis_.set_title(title)
        axis_.axis("off")
    fig.suptitle(f"{args.case}: projection-domain simulation, axial plane {k} "
                 f"({res.params['lesions']} lesions; kBq/ml-like, same scale for truth/full/low)")
    fig.tight_layout()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out_dir / "pet_simulation.png", dpi=90)
    plt.close(fig)

    brain = labels.array > 0
    in_plane = tuple(float(s) for a, s in enumerate(labels.spacing) if a != ax)
    f_proj, nps_proj = radial_nps(im["low_5"] - im["truth"], brain, ax, in_plane)
    pair = simulate_pet(labels, head_mask=head_mask_from_image(t1, brain), seed=0, dose_fraction=0.05)
    f_img, nps_img = radial_nps(pair.low.array - pair.full.array, brain, ax, in_plane)
    fig, axis_ = plt.subplots(figsize=(6, 4))
    axis_.semilogy(f_proj, nps_proj, "o-", label="projection mode: OSEM 5 % - truth")
    axis_.semilogy(f_img, nps_img, "s-", label="image mode: low 5 % - full (white)")
    axis_.set_xlabel("spatial frequency (cycles/mm)")
    axis_.set_ylabel("noise power / its mean")
    axis_.set_title("Radially averaged 2D NPS (axial planes, brain)")
    axis_.legend()
    fig.tight_layout()
    fig.savefig(args.out_dir / "pet_noise_power.png", dpi=90)
    plt.close(fig)
    print(f"wrote {args.out_dir / 'pet_simulation.png'} and {args.out_dir / 'pet_noise_power.png'}")
    print("nps projection", np.round(nps_proj, 3).tolist())
    print("nps image", np.round(nps_img, 3).tolist())


if __name__ == "__main__":
    main()
