"""Projection-domain PET simulation: activity + lesions -> sinograms -> Poisson counts -> OSEM.

The pipeline of ``voxdiff simulate-pet --physics projection`` (the physics and every default's
source are in ``docs/pet-simulation.md``):

1. **Activity** from the label map (:func:`voxdiff.sim.pet.activity_map`, per-subject regional
   factors), in kBq/ml-like units (white matter = ``wm_activity`` before its factor), plus
   optional spherical lesions (:mod:`voxdiff.sim.lesions`); ``lesion_free_fraction`` of the cases
   (a seeded draw per case) get none.
2. **Attenuation** map at 511 keV (:mod:`voxdiff.sim.attenuation`, 1/cm).
3. **Acquisition**, per axial plane (2D, :mod:`voxdiff.sim.projector`): the activity is blurred
   by the system PSF (3D Gaussian, ``fwhm_mm``) and projected on a grid ``oversample`` times finer
   in-plane than the image (so the data are not made with the reconstruction's own model), with
   attenuation factors ``a = exp(-line integral of mu)`` from the fine mu map; bins are pooled to
   the reconstruction's bin width. Normalisation ``n`` and the scatter + randoms background
   (:mod:`voxdiff.sim.scanner`) give the expected prompts ``ybar = c (n (a A G x + s) + r)``,
   ``c`` set so that the prompts total ``prompts``.
4. **Counts**: ``y ~ Poisson(ybar)``; each low dose ``d`` keeps every count with probability
   ``d`` (binomial thinning of the full-dose counts, the sinogram equivalent of list-mode
   decimation), independently per dose.
5. **Reconstruction** (:func:`voxdiff.sim.osem.osem`) on the image grid: ``w = c n a`` with the
   attenuation factors of the (coarse) mu map, background ``d c (n s + r)`` as the additive term;
   the low-dose images are divided by ``d`` so every image is in the same units (E[low] ~ E[full]).
   ``nac_low_<tag>`` leaves ``a`` out (non-attenuation-corrected). ``comp_<tag>`` (``complement_doses``)
   reconstructs the counts thinning left out, ``full - low`` at dose ``1 - d``: a Poisson split, so it is
   statistically independent of ``low_<tag>`` (a training target that shares none of the input's noise,
   which a list-mode user can make too). The **truth** is the same OSEM
   run on the noise-free expected sinogram ``ybar``: the image a perfect denoiser of this
   reconstruction should produce (same resolution and convergence), not the raw activity.
6. Optional Gaussian post-filter (``post_filter_mm``) on every reconstruction, truth included.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping, NamedTuple, Sequence

import numpy as np
import torch
from scipy import ndimage as ndi

from voxdiff.errors import VoxdiffError
from voxdiff.io import Volume, check_same_geometry
from voxdiff.sim.attenuation import mu_map_brainweb, mu_map_from_icv
from voxdiff.sim.lesions import (check_lesion_settings, insert_lesions, is_lesion_free, lesion_record,
                                 place_lesions)
from voxdiff.sim.osem import osem
from voxdiff.sim.pet import (SCHEMES, _integer_labels, activity_map, find_muse_tables, head_mask_from_image,
                             head_mask_from_labels)
from voxdiff.sim.projector import ParallelBeamProjector, PlaneGeometry, make_projector
from voxdiff.sim.psf import gaussian_blur, sigma_voxels
from voxdiff.sim.scanner import background_model, normalisation_factors

__all__ = ["ProjectionSettings", "ProjectionPet", "SinogramModel", "dose_tag", "axial_axis", "draw_counts",
           "simulate_projection_pet", "projection_roles"]

#: MUSE region classes that count as deep grey matter for lesion placement.
_DEEP_GM = ("striatum", "thalamus", "pallidum", "accumbens")


def dose_tag(fraction: float) -> str:
    """Short percentage tag of a dose fraction: 0.25 -> '25', 0.05 -> '5', 0.005 -> '0.5'."""
    return f"{round(float(fraction) * 100.0, 6):g}"


@dataclass(frozen=True)
class ProjectionSettings:
    """Every setting of the projection-domain simulation (defaults and sources: docs/pet-simulation.md)."""

    doses: tuple[float, ...] = (0.25, 0.1, 0.05, 0.01)
    nac_doses: tuple[float, ...] | None = None   # None: every dose
    complement_doses: tuple[float, ...] = ()     # doses that also get comp_<tag>: the full-dose counts minus low's
    prompts: float = 1.0e8                       # expected full-dose prompts, all planes together
    fwhm_mm: float = 4.5                         # total system resolution (3D Gaussian)
    psf_recon: bool = False                      # model the PSF in the reconstruction
    iterations: int = 3
    subsets: int = 21
    n_views: int = 168
    oversample: int = 2                          # in-plane oversampling of the data simulation
    background_fraction: float = 0.3             # scatter + randoms share of the prompts
    randoms_share: float = 1.0 / 3.0             # randoms share of that background
    norm_spread: float = 0.1                     # relative sd of the detector efficiencies
    post_filter_mm: float = 0.0
    wm_activity: float = 5.0                     # kBq/ml of white matter (before its regional factor)
    region_sd: float = 0.1
    lesions: int = 4
    lesion_diameters: tuple[float, ...] = (4.0, 8.0, 12.0, 16.0)
    lesion_contrast: tuple[float, ...] = (1.5, 6.0)
    lesion_free_fraction: float = 0.3
    device: str = "cpu"

    def record(self) -> dict[str, Any]:
        """The settings as ``CASE_pet.json`` records them (JSON types). An empty ``complement_doses`` is left
        out, so datasets simulated before it existed still read as made with these settings."""
        out = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}
        if not out["complement_doses"]:
            del out["complement_doses"]
        return json.loads(json.dumps(out))

    def nac(self) -> tuple[float, ...]:
        """The doses that get a non-attenuation-corrected reconstruction."""
        return tuple(self.doses) if self.nac_doses is None else tuple(self.nac_doses)

    def check(self) -> None:
        """Refuse impossible settings with one sentence naming the option."""
        if not self.doses:
            raise VoxdiffError("--doses needs at least one dose fraction")
        for d in (*self.doses, *self.nac()):
            if not 0.0 < d < 1.0:
                raise VoxdiffError(f"--doses fractions must lie in (0, 1) (the full dose is always simulated), got {d}")
        tags = [dose_tag(d) for d in self.doses]
        if len(set(tags)) != len(tags):
            raise VoxdiffError(f"--doses has repeated fractions ({', '.join(tags)} %)")
        for option, wanted in (("--nac-doses", self.nac()), ("--complement-doses", self.complement_doses)):
            missing = [d for d in wanted if dose_tag(d) not in tags]
            if missing:
                raise VoxdiffError(f"{option} {missing} must be among --doses {list(self.doses)}")
        if not (self.prompts > 0 and math.isfinite(self.prompts)):
            raise VoxdiffError(f"--prompts must be a positive number of counts, got {self.prompts}")
        if not self.fwhm_mm >= 0:
            raise VoxdiffError(f"--fwhm must be >= 0 mm, got {self.fwhm_mm}")
        if self.iterations < 1:
            raise VoxdiffError(f"--iterations must be >= 1, got {self.iterations}")
        if self.n_views < 2:
            raise VoxdiffError(f"--views must be >= 2, got {self.n_views}")
        if not 1 <= self.subsets <= self.n_views:
            raise VoxdiffError(f"--subsets must lie in 1..{self.n_views} (the number of views), got {self.subsets}")
        if self.oversample not in (1, 2, 3, 4):
            raise VoxdiffError(f"--oversample must be 1, 2, 3 or 4, got {self.oversample}")
        if not 0.0 <= self.background_fraction < 1.0:
            raise VoxdiffError(f"--background-fraction must lie in [0, 1), got {self.background_fraction}")
        if not self.post_filter_mm >= 0:
            raise VoxdiffError(f"--post-filter-mm must be >= 0, got {self.post_filter_mm}")
        if not self.wm_activity > 0:
            raise VoxdiffError(f"the white-matter activity must be > 0 kBq/ml, got {self.wm_activity}")
        check_lesion_settings(self.lesions, self.lesion_diameters, self.lesion_contrast, self.lesion_free_fraction)
        if self.device != "cpu" and not self.device.startswith("cuda"):
            raise VoxdiffError(f"--device must be cpu or cuda[:N], got '{self.device}'")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise VoxdiffError(f"--device {self.device}: no CUDA device is available")


def projection_roles(settings: ProjectionSettings) -> list[str]:
    """Output image roles, in file order: full, low_<tag>..., nac_low_<tag>..., comp_<tag>..., truth, activity,
    mumap, lesions."""
    return (["full"] + [f"low_{dose_tag(d)}" for d in settings.doses]
            + [f"nac_low_{dose_tag(d)}" for d in settings.nac()]
            + [f"comp_{dose_tag(d)}" for d in settings.complement_doses] + ["truth", "activity", "mumap", "lesions"])


class ProjectionPet(NamedTuple):
    """Output of :func:`simulate_projection_pet`: volumes by role, the lesion JSON, and every parameter."""

    images: dict[str, Volume]
    lesions: dict[str, Any]
    params: dict[str, Any]


def axial_axis(affine: np.ndarray) -> int:
    """The array axis closest to the world superior-inferior (z) direction: the PET scanner axis."""
    cols = np.asarray(affine, float)[:3, :3]
    return int(np.argmax(np.abs(cols[2]) / np.linalg.norm(cols, axis=0)))


@dataclass
class SinogramModel:
    """The reconstruction's Poisson model of one subject: ``y ~ Poisson(d (w * A G x + b))``.

    ``w_ac = c n a`` and ``w_nac = c n`` are ``(n_views, n_bins, n_planes)``; ``background`` is
    the full-dose ``c (n s + r)``; ``blur`` is the PSF of the reconstruction (None: no PSF modelling).
    """

    projector: ParallelBeamProjector
    w_ac: torch.Tensor
    w_nac: torch.Tensor
    background: torch.Tensor
    plane_shape: tuple[int, int, int]
    blur_sigma: tuple[float, float, float] | None = None
    post_sigma: tuple[float, float, float] | None = None

    def _blur(self, sigma: tuple[float, float, float]):
        nx, ny, nz = self.plane_shape

        def apply(x: torch.Tensor) -> torch.Tensor:
            cols = x.shape[-1] // nz
            vol = x.reshape(nx, ny, nz, cols).permute(3, 0, 1, 2)
            return gaussian_blur(vol, sigma).permute(1, 2, 3, 0).reshape(nx * ny, nz * cols)
        return apply

    def reconstruct(self, counts: torch.Tensor, *, dose: float = 1.0, attenuation: bool = True, iterations: int,
                    subsets: int, rescale: bool = True, callback=None) -> torch.Tensor:
        """OSEM image ``(nx, ny, n_planes)`` of a ``(n_views, n_bins, n_planes)`` sinogram at ``dose``.

        With ``rescale`` the image is divided by ``dose`` (same units at every dose), then post-filtered.
        """
        w = self.w_ac if attenuation else self.w_nac
        blur = self._blur(self.blur_sigma) if self.blur_sigma is not None else None
        x = osem(counts, self.projector, w, dose * self.background, n_iter=iterations, n_subsets=subsets,
                 blur=blur, callback=callback)
        nx, ny, nz = self.plane_shape
        img = x.reshape(nx, ny, nz)
        if rescale:
            img = img / dose
            if self.post_sigma is not None:
                img = gaussian_blur(img[None], self.post_sigma)[0]
        return img


def draw_counts(expected: np.ndarray, doses: Sequence[float], rng: np.random.Generator
                ) -> tuple[np.ndarray, dict[float, np.ndarray]]:
    """Full-dose counts ``Poisson(expected)`` and, per dose, ``Binomial(full, dose)`` (list-mode thinning)."""
    full = rng.poisson(expected)
    return full, {d: rng.binomial(full, d) for d in doses}


def _region_masks(labels: np.ndarray, scheme: str, info: Mapping[str, Any]) -> dict[str, np.ndarray]:
    if scheme == "brainweb":
        return {"GM": labels == 2, "WM": labels == 3}
    classes = {int(k): v["class"] for k, v in info["regions"].items()}
    pick = lambda wanted: np.isin(labels, [k for k, c in classes.items() if c in wanted])  # noqa: E731
    return {"GM": pick(("cortical_gm",)), "WM": pick(("wm",)), "deep_gm": pick(_DEEP_GM)}


def _upsample(vol: np.ndarray, f: int) -> np.ndarray:
    """Nearest-neighbour in-plane upsampling of an ``(nx, ny, nz)`` array by ``f``."""
    return vol if f == 1 else np.repeat(np.repeat(vol, f, axis=0), f, axis=1)


def simulate_projection_pet(
    label_volume: Volume,
    *,
    case: str,
    seed: int = 0,
    settings: ProjectionSettings = ProjectionSettings(),
    scheme: str = "muse",
    head_mask: np.ndarray | None = None,
    t1: Volume | None = None,
    tables_dir: str | Path | None = None,
    uptake: Mapping[Any, float] | None = None,
) -> ProjectionPet:
    """Simulate full-dose, low-dose, NAC and noise-free (truth) OSEM images of one subject (module doc).

    ``seed`` is the base seed: the subject draws from ``(seed, crc32(case))`` (regional factors,
    lesions, noise; the regional factors equal image mode's for the same seed), the scanner
    normalisation from ``seed`` alone. ``head_mask`` defaults to one from ``t1`` (when given), else
    the labels dilated by 10 mm (MUSE); ``t1`` also finds the skull. Returns volumes in the label
    map's geometry: float32 images in kBq/ml-like units, ``mumap`` in 1/cm, ``lesions`` uint16 ids.
    On CPU torch runs single-threaded inside this call (restored after): OSEM's many small
    element-wise ops are slower with intra-op threads (measured 0.02 ms vs 0.2-6 ms per op on 2 busy cores).
    """
    if settings.device == "cpu":
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return _simulate(label_volume, case=case, seed=seed, settings=settings, scheme=scheme,
                             head_mask=head_mask, t1=t1, tables_dir=tables_dir, uptake=uptake)
        finally:
            torch.set_num_threads(threads)
    return _simulate(label_volume, case=case, seed=seed, settings=settings, scheme=scheme, head_mask=head_mask,
                     t1=t1, tables_dir=tables_dir, uptake=uptake)


def _simulate(label_volume: Volume, *, case: str, seed: int, settings: ProjectionSettings, scheme: str,
              head_mask: np.ndarray | None, t1: Volume | None, tables_dir: str | Path | None,
              uptake: Mapping[Any, float] | None) -> ProjectionPet:
    """:func:`simulate_projection_pet` itself."""
    t_start = time.perf_counter()
    settings.check()
    if scheme not in SCHEMES:
        raise VoxdiffError(f"unknown PET simulation scheme '{scheme}' (use {' or '.join(SCHEMES)})")
    labels = _integer_labels(label_volume)
    spacing = np.asarray(label_volume.spacing, float)
    if scheme == "muse" and tables_dir is None:
        tables_dir = find_muse_tables(label_volume.path)
    if t1 is not None:
        check_same_geometry(label_volume, t1, what="T1 image")
    icv = labels > 0
    head_source = "phantom tissue classes"
    if scheme == "muse":
        if head_mask is not None:
            head = np.asarray(head_mask, bool)
            if head.shape != labels.shape:
                raise VoxdiffError(f"head mask shape {head.shape} differs from the label map's {labels.shape}")
            head_source = "given"
        elif t1 is not None:
            head, head_source = head_mask_from_image(t1, icv), "thresholded T1"
        else:
            head, head_source = head_mask_from_labels(labels, spacing, 10.0), "labels dilated by 10 mm"
    else:
        head = labels > 0

    from voxdiff.sim.pet import case_seed

    region_seq, lesion_seq, noise_seq = np.random.SeedSequence(case_seed(seed, case)).spawn(3)
    rel, brain, info = activity_map(labels, scheme=scheme, head_mask=head if scheme == "muse" else None,
                                    region_sd=settings.region_sd, rng=np.random.default_rng(region_seq),
                                    tables_dir=tables_dir, uptake=uptake)
    activity = rel * np.float32(settings.wm_activity)

    # Lesions.
    free = settings.lesions == 0 or is_lesion_free(seed, case, settings.lesion_free_fraction)
    placed, missed = [], []
    ids = np.zeros(labels.shape, np.uint16)
    if not free:
        placed, missed = place_lesions(_region_masks(labels, scheme, info), icv if scheme == "muse" else brain,
                                       spacing, n=settings.lesions, diameters=settings.lesion_diameters,
                                       contrast=settings.lesion_contrast, rng=np.random.default_rng(lesion_seq))
        activity, ids = insert_lesions(activity, placed, spacing)

    # Attenuation.
    if scheme == "muse":
        wm = np.isin(labels, [int(k) for k, v in info["regions"].items() if v["class"] == "wm"])
        mu, mu_info = mu_map_from_icv(icv, head, spacing, t1=None if t1 is None else t1.array, wm=wm)
    else:
        mu, mu_info = mu_map_brainweb(labels)

    # Plane geometry: the scanner axis last.
    ax = axial_axis(label_volume.affine)
    order = [a for a in range(3) if a != ax] + [ax]
    inverse = list(np.argsort(order))
    act_p = np.ascontiguousarray(activity.transpose(order))
    mu_p = np.ascontiguousarray(mu.transpose(order))
    nx, ny, nz = act_p.shape
    dx, dy, dz = (float(spacing[a]) for a in order)
    dev = torch.device(settings.device)
    geo = PlaneGeometry.for_plane(nx, ny, dx, dy, n_views=settings.n_views)
    proj = make_projector(geo, settings.device)

    # Data simulation on the oversampled grid.
    f = settings.oversample
    fine_geo = PlaneGeometry(nx * f, ny * f, dx / f, dy / f, geo.n_views, geo.n_bins * f, geo.bin_mm / f)
    fine = make_projector(fine_geo, settings.device) if f > 1 else proj
    act_f = _upsample(act_p, f)
    if settings.fwhm_mm > 0:  # one-off blur: scipy's separable filter is the fastest on CPU
        act_f = ndi.gaussian_filter(act_f, sigma_voxels(settings.fwhm_mm, (dx / f, dy / f, dz)), mode="constant")
    act_f = torch.as_tensor(np.maximum(act_f, 0), device=dev)
    mu_f = torch.as_tensor(_upsample(mu_p, f), device=dev) * 0.1           # 1/cm -> 1/mm
    line_act = fine.forward(act_f.reshape(-1, nz))
    line_mu = fine.forward(mu_f.reshape(-1, nz))
    trues_att = (torch.exp(-line_mu) * line_act).reshape(geo.n_views, geo.n_bins, f, nz).mean(2)
    norm = normalisation_factors(geo.n_views, geo.n_bins, nz, bin_mm=geo.bin_mm, plane_mm=dz,
                                 spread=settings.norm_spread, seed=[int(seed), 0x0A11]).to(dev)
    scatter, randoms = background_model(trues_att, norm, background_fraction=settings.background_fraction,
                                        randoms_share=settings.randoms_share, bin_mm=geo.bin_mm, plane_mm=dz)
    unit_prompts = norm * (trues_att + scatter) + randoms
    scale = settings.prompts / float(unit_prompts.double().sum())
    ybar = (scale * unit_prompts.double()).cpu().numpy()

    # Counts and thinning.
    full, low = draw_counts(ybar, settings.doses, np.random.default_rng(noise_seq))

    # Reconstruction model on the image grid.
    line_mu_c = proj.forward(torch.as_tensor(mu_p, device=dev).reshape(-1, nz) * 0.1).reshape(geo.n_views, geo.n_bins, nz)
    model = SinogramModel(
        projector=proj,
        w_ac=(scale * norm * torch.exp(-line_mu_c)).float(),
        w_nac=(scale * norm).float(),
        background=(scale * (norm * scatter + randoms)).float(),
        plane_shape=(nx, ny, nz),
        blur_sigma=sigma_voxels(settings.fwhm_mm, (dx, dy, dz)) if settings.psf_recon and settings.fwhm_mm > 0 else None,
        post_sigma=sigma_voxels(settings.post_filter_mm, (dx, dy, dz)) if settings.post_filter_mm > 0 else None,
    )
    as_t = lambda a: torch.as_tensor(a, dtype=torch.float32, device=dev)  # noqa: E731
    rec = lambda counts, **kw: model.reconstruct(as_t(counts), iterations=settings.iterations,  # noqa: E731
                                                 subsets=settings.subsets, **kw)
    planes: dict[str, torch.Tensor] = {"full": rec(full)}
    for d in settings.doses:
        planes[f"low_{dose_tag(d)}"] = rec(low[d], dose=d)
    for d in settings.nac():
        planes[f"nac_low_{dose_tag(d)}"] = rec(low[d], dose=d, attenuation=False)
    for d in settings.complement_doses:
        planes[f"comp_{dose_tag(d)}"] = rec(full - low[d], dose=1.0 - d)
    planes["truth"] = rec(ybar)

    def volume(arr: np.ndarray, dtype=np.float32) -> Volume:
        vol = label_volume.with_array(np.ascontiguousarray(np.asarray(arr).astype(dtype)))
        vol.disk_dtype, vol.disk_scaling = np.dtype(dtype), (1.0, 0.0)
        return vol

    images = {role: volume(t.cpu().numpy().transpose(inverse)) for role, t in planes.items()}
    images["activity"] = volume(activity)
    images["mumap"] = volume(mu)
    images["lesions"] = volume(ids, np.uint16)

    counts_per_dose = {"100": {"expected": float(ybar.sum()), "prompts": int(full.sum())}}
    for d in settings.doses:
        counts_per_dose[dose_tag(d)] = {"expected": float(ybar.sum() * d), "prompts": int(low[d].sum())}
    bg = model.background.double()
    lesion_json = lesion_record(case, free, placed, label_volume.affine, lesions_requested=0 if free else settings.lesions,
                                diameters_not_placed=missed,
                                background_definition="mean noise-free activity (before blur) the sphere replaced",
                                units="kBq/ml-like (same as the images)")
    params: dict[str, Any] = {
        "physics": "projection",
        "case": case,
        "scheme": scheme,
        "seed": [int(s) for s in case_seed(seed, case)],
        "seed_base": int(seed),
        "settings": settings.record(),
        "units": "kBq/ml-like activity concentration; low-dose images divided by their dose fraction",
        "mumap_units": "1/cm",
        "geometry": {"axial_axis": ax, "plane_shape": [nx, ny], "planes": nz, "pixel_mm": [dx, dy], "plane_mm": dz,
                     "views": geo.n_views, "radial_bins": geo.n_bins, "bin_mm": geo.bin_mm,
                     "oversample": f, "projector": "Joseph ray-driven sparse matrix, 2D per axial plane",
                     "system_matrix_nnz": proj.nnz},
        "counts": counts_per_dose,
        "trues_expected": float((scale * norm * trues_att).double().sum()),
        "scatter_expected": float((scale * norm * scatter).double().sum()),
        "randoms_expected": float((scale * randoms).double().sum()),
        "background_fraction_expected": float(bg.sum() / float(ybar.sum())),
        "sensitivity_scale": scale,
        "head_mask": head_source,
        "attenuation": mu_info,
        "lesion_free": free,
        "lesions": len(placed),
        "truth": "OSEM of the noise-free expected sinogram, same iterations, subsets, PSF and post-filter",
        "noise_model": ("full ~ Poisson(ybar); low_d = Binomial(full, d), independent per dose; OSEM(low_d) / d"
                        + ("; comp_d = OSEM(full - low_d) / (1 - d)" if settings.complement_doses else "")),
        **{k: v for k, v in info.items() if k != "scheme"},
        "seconds": round(time.perf_counter() - t_start, 2),
    }
    return ProjectionPet(images=images, lesions=lesion_json, params=params)
