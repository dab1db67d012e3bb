"""``voxdiff demo --task translate``: a 5 %-dose brain PET denoised three ways, scored against the truth, offline.

No data download and no ``../shared``: the MNI152 2009 template ships inside the nilearn wheel.
It is brought onto the IXI training grid (:func:`voxdiff.demo.mni.mni_on_ixi_grid`: 120 x 120 x
90 voxels at 2 mm, PSR, with an average IXI head around the brain), turned into a tissue-class
phantom (CSF / GM / WM inside the brain, then CSF, skull and scalp shells) and simulated exactly
as ``pretrained:pet-denoise``'s training data were (:func:`voxdiff.sim.physics.simulate_projection_pet`:
FDG-like uptake with per-region variation, four spherical lesions, attenuation, 2D projections
with a 4.5 mm PSF, detector normalisation, scatter and randoms, 1e8 full-dose prompts, binomial
thinning to 5 %, OSEM 3 x 21; the truth is the same OSEM of the noise-free sinogram).

The low-dose image is then denoised by what a PET user would try first, the clinical Gaussian
post-filter (:data:`DEMO_GAUSSIAN_FWHM_MM`, the FWHM the race fitted on its training subjects),
and by ``pretrained:pet-denoise`` through :func:`voxdiff.pipelines.load_pipeline` (the code path
of ``voxdiff translate``); every image is scored against the truth in the brain.
"""

from __future__ import annotations

from rich.markup import escape

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from voxdiff.demo.common import (DemoTable, check_counts, check_crop, csv_text, default_console, plural,
                                 prepare_out_dir, progress_bar, require_model, stage)
from voxdiff.demo.montage import brain_slices, display
from voxdiff.io import Volume
from voxdiff.sim.physics import ProjectionSettings

__all__ = ["DEMO_MODEL", "DEMO_DOSE", "DEMO_GAUSSIAN_FWHM_MM", "DEMO_SETTINGS", "DEMO_SIMULATION", "DEMO_FILES",
           "demo_phantom", "simulate_demo_pet", "run_pet_demo"]

DEMO_MODEL = "pretrained:pet-denoise"
DEMO_DOSE = 0.05
#: The Gaussian post-filter's FWHM at 5 % dose: the grid-search optimum (PSNR against the truth) on the
#: race's training subjects (BENCHMARKS.md sections 9 and 10), never fitted on the demo image.
DEMO_GAUSSIAN_FWHM_MM = 6.0
#: The training data's simulation (``voxdiff simulate-pet-dataset`` defaults), one dose, always lesions.
DEMO_SETTINGS = ProjectionSettings(doses=(DEMO_DOSE,), nac_doses=(), lesion_free_fraction=0.0)
DEMO_SIMULATION: dict[str, Any] = DEMO_SETTINGS.record()
DEMO_FILES = ("truth.nii.gz", "low.nii.gz", "full.nii.gz", "gaussian.nii.gz", "ppdm.nii.gz", "uncertainty.nii.gz",
              "brain_mask.nii.gz", "lesions.nii.gz", "montage.png", "metrics.csv", "metrics.json")
#: Head shells outside the brain (mm from the brain mask, upper edge) and their BrainWeb classes:
#: CSF, skull (bone in the mu map), scalp. They follow the IXI head profile the template's T1 gets
#: (:data:`voxdiff.demo.mni.IXI_HEAD_PROFILE`: dark bone at 2-4 mm, bright marrow/fat, skin to ~14 mm).
_HEAD_SHELLS_MM = ((2.0, 1), (6.0, 7), (14.0, 9))
_CASE = "mni152"


def demo_phantom(*, crop: int | None = None) -> Volume:
    """BrainWeb tissue classes of the MNI152 template on the IXI grid (0 air, 1 CSF, 2 GM, 3 WM, 7 skull, 9 scalp).

    Inside nilearn's brain mask the classes are the template's tissue reference (argmax of CSF,
    GM, WM probabilities); outside, :data:`_HEAD_SHELLS_MM`. ``crop=N``: an N^3 cube at the
    brain's centre (a quick test size; world positions kept).
    """
    from scipy import ndimage as ndi

    from voxdiff.demo.mni import mni_on_ixi_grid, window_volume

    grid = mni_on_ixi_grid()
    classes = grid.reference.array.astype(np.uint8)
    brain = grid.brain
    dist = ndi.distance_transform_edt(~brain, sampling=grid.t1.spacing)
    lower = 0.0
    for upper, cls in _HEAD_SHELLS_MM:
        classes[~brain & (dist > lower) & (dist <= upper)] = cls
        lower = upper
    vol = grid.reference.with_array(classes)
    vol.disk_dtype = np.dtype(np.uint8)
    if crop is not None:
        hit = np.argwhere(brain)
        centre = (hit.min(axis=0) + hit.max(axis=0)) // 2
        start = [int(np.clip(c - crop // 2, 0, max(n - crop, 0))) for c, n in zip(centre, brain.shape)]
        vol = window_volume(vol, start, [crop] * 3)
        vol.disk_dtype = np.dtype(np.uint8)
    return vol


def simulate_demo_pet(phantom: Volume, *, seed: int = 0):
    """Full-dose, 5 %-dose and truth OSEM images of the phantom (:data:`DEMO_SETTINGS`); a ``ProjectionPet``."""
    from voxdiff.sim.physics import simulate_projection_pet

    return simulate_projection_pet(phantom, case=_CASE, seed=seed, settings=DEMO_SETTINGS, scheme="brainweb")


def _write_montage(path: Path, vols: dict[str, np.ndarray], affine: np.ndarray, brain: np.ndarray,
                   title: str, labels: dict[str, str]) -> Path:
    """Three orthogonal slices of truth, low dose, Gaussian, PPDM, PPDM error and uncertainty."""
    from voxdiff.plots import montage

    disp = {k: display(v, affine) for k, v in vols.items()}
    mask = display(brain.astype(np.uint8), affine) > 0
    err = np.abs(disp["ppdm"] - disp["truth"])

    def top(a: np.ndarray) -> float:
        v = float(np.percentile(a[mask], 99.5))
        return v if v > 0 else 1.0

    vmax, emax, smax = top(disp["truth"]), top(err), top(disp["uncertainty"])
    # Error and uncertainty are far below the images' range: each gets its own scale, written in its title.
    panels = {"truth (noise-free OSEM)": disp["truth"], labels["input"]: disp["input"], labels["gaussian"]: disp["gaussian"],
              "PPDM": disp["ppdm"], f"|PPDM - truth| (0-{emax:.1f})": err,
              f"uncertainty, std (0-{smax:.2f})": disp["uncertainty"]}
    names = list(panels)
    ranges = {**{n: (0.0, vmax) for n in names[:4]}, names[4]: (0.0, emax), names[5]: (0.0, smax)}
    cmaps = {n: "inferno" for n in names[4:]}
    return montage(panels, path, title=title, ranges=ranges, cmaps=cmaps, center=brain_slices(mask))


def _lesion_crc(image: np.ndarray, pet, spacing) -> float | None:
    """Mean activity-referenced contrast recovery over the phantom's scorable lesions (None if none)."""
    from voxdiff.metrics.pet import lesion_crc

    rows = lesion_crc(image, pet.lesions["lesions"], spacing, lesion_map=pet.images["lesions"].array,
                      activity=pet.images["activity"].array)
    values = [r["crc"] for r in rows if r.get("crc") is not None and np.isfinite(r["crc"])]
    return float(np.mean(values)) if values else None


def _metrics_table(metrics: dict[str, dict[str, Any]], labels: dict[str, str], lesions: int) -> DemoTable:
    table = DemoTable("against the truth (OSEM of the noise-free data), inside the brain",
                      [("image", False), ("PSNR (dB)", True), ("SSIM", True), ("NRMSE", True),
                       (f"lesion CRC ({plural(lesions, 'lesion')})", True)],
                      caption="CRC: contrast recovered, 1 = the true activity ratio; the truth's own CRC is "
                              "below 1 (4.5 mm PSF, OSEM 3 x 21).")
    for key, m in metrics.items():
        crc = "–" if m.get("crc") is None else f"{m['crc']:.2f}"
        table.rows.append([labels[key], f"{m['psnr']:.2f}", f"{m['ssim']:.3f}", f"{m['nrmse']:.3f}", crc])
    return table


def run_pet_demo(out_dir: str | Path, *, steps: int | None = None, samples: int = 4, seed: int = 0,
                 crop: int | None = None, model: str = DEMO_MODEL, show_progress: bool = True,
                 console=None) -> dict[str, Any]:
    """Simulate, denoise (Gaussian and PPDM), score and picture one brain PET; returns what ``metrics.json`` holds (+ ``tables``).

    Args:
        out_dir: folder for :data:`DEMO_FILES` (created if missing).
        steps: sampling steps (default: the model's, 5).
        samples: stochastic samples, batched; the output is their mean and the uncertainty
            their voxel-wise standard deviation (1 sample: no uncertainty map, zeros written).
        seed: seed of the simulation noise (and lesions) and of the sampler.
        crop: an N^3 cube at the brain's centre instead of the whole head (tests).
        model: the translation model (a checkpoint path or ``pretrained:NAME``).
        show_progress: stage lines and progress bars on ``console``.

    The returned ``tables`` (:class:`~voxdiff.demo.common.DemoTable`, not in the JSON) are what
    ``voxdiff demo`` prints.
    """
    check_counts(samples=samples, steps=steps)
    check_crop(crop)
    console = default_console(console)
    from voxdiff.io import atomic_write_text, save_volume
    from voxdiff.metrics import image_metrics
    from voxdiff.pipelines import load_pipeline
    from voxdiff.sim.psf import gaussian_post_filter

    require_model(model, "translate")  # an unknown model fails before any work
    out_dir = Path(out_dir)
    prepare_out_dir(out_dir, DEMO_FILES[0])
    paths = {name.replace(".nii.gz", "").replace(".", "_"): out_dir / name for name in DEMO_FILES}
    seconds: dict[str, float] = {}
    t0, c0 = time.perf_counter(), time.process_time()
    with stage(console, "MNI152 template on the IXI grid (nilearn, offline)", show_progress):
        phantom = demo_phantom(crop=crop)
    seconds["template"] = time.perf_counter() - t0

    t = time.perf_counter()
    tag = f"{DEMO_DOSE * 100:g} %"
    with stage(console, f"projection-domain PET: 1e8 prompts, {tag} by thinning, OSEM 3 x 21", show_progress):
        pet = simulate_demo_pet(phantom, seed=seed)
        images = pet.images
        low, truth = images[f"low_{DEMO_DOSE * 100:g}"], images["truth"]
        brain = np.isin(phantom.array, (1, 2, 3))
        for role in ("truth", "full"):
            save_volume(images[role], paths[role])
        save_volume(low, paths["low"])
        save_volume(images["lesions"], paths["lesions"], dtype=np.uint16)
        save_volume(phantom.with_array(brain.astype(np.uint8)), paths["brain_mask"], dtype=np.uint8)
    seconds["simulate"] = time.perf_counter() - t

    t = time.perf_counter()
    gauss = low.with_array(gaussian_post_filter(low.array, DEMO_GAUSSIAN_FWHM_MM, low.spacing).astype(np.float32))
    save_volume(gauss, paths["gaussian"])
    seconds["gaussian"] = time.perf_counter() - t

    t = time.perf_counter()
    pipe = load_pipeline(model)
    with progress_bar(console, "denoise", show_progress) as progress:
        res = pipe(low, steps=steps, samples=samples, seed=seed, progress=progress)
    pred = res["output"]
    std = res["std"].array if samples > 1 else np.zeros_like(pred.array)
    res.save({"output": paths["ppdm"], **({"std": paths["uncertainty"]} if samples > 1 else {})})
    if samples == 1:
        save_volume(pred.with_array(std), paths["uncertainty"])
    info = res.info
    seconds["denoise"] = time.perf_counter() - t
    if show_progress:
        console.print(f"[green]✓[/] denoised with {escape(str(model))} ({plural(info['steps'], 'step')} x "
                      f"{plural(samples, 'sample')}) [dim]{seconds['denoise']:.1f} s[/]", highlight=False)

    t = time.perf_counter()
    candidates = {"input": low.array, "full": images["full"].array, "gaussian": gauss.array, "ppdm": pred.array}
    metrics: dict[str, dict[str, Any]] = {}
    for name, arr in candidates.items():
        metrics[name] = {**image_metrics(arr, truth.array, mask=brain), "crc": _lesion_crc(arr, pet, low.spacing)}
    metrics["truth"] = {"crc": _lesion_crc(truth.array, pet, low.spacing)}
    labels = {"input": f"low dose ({tag}, the input)", "full": "full dose (100 %)",
              "gaussian": f"Gaussian post-filter {DEMO_GAUSSIAN_FWHM_MM:g} mm",
              "ppdm": f"PPDM ({plural(info['steps'], 'step')}, {plural(samples, 'sample')})"}
    title = (f"voxdiff demo: projection-simulated FDG PET on MNI152 (radiological view)\nPSNR vs truth in brain: "
             f"{metrics['input']['psnr']:.1f} dB ({tag} dose), {metrics['gaussian']['psnr']:.1f} dB (Gaussian "
             f"{DEMO_GAUSSIAN_FWHM_MM:g} mm), {metrics['ppdm']['psnr']:.1f} dB (PPDM)")
    _write_montage(paths["montage_png"], {**{k: candidates[k] for k in ("input", "gaussian", "ppdm")},
                                          "truth": truth.array, "uncertainty": std},
                   pred.affine, brain, title, {"input": f"low dose ({tag})", "gaussian": labels["gaussian"]})
    seconds["metrics_montage"] = time.perf_counter() - t
    seconds["total"] = time.perf_counter() - t0
    cpu_seconds = time.process_time() - c0

    keys = ("psnr", "ssim", "nrmse", "mae", "nmse", "data_range")
    atomic_write_text(paths["metrics_csv"], csv_text(
        ["image", *keys, "crc"],
        [[name, *(f"{m[k]:.6g}" for k in keys), "" if m["crc"] is None else f"{m['crc']:.6g}"]
         for name, m in metrics.items() if name != "truth"]))
    n_lesions = len(pet.lesions["lesions"])
    summary: dict[str, Any] = {
        "task": "translate",
        "model": model,
        "steps": info["steps"],
        "samples": samples,
        "seed": seed,
        "metrics": {name: {k: (None if v is None else float(v)) for k, v in m.items()} for name, m in metrics.items()},
        "metric_convention": "voxdiff.metrics: the truth (OSEM of the noise-free sinogram) as target, brain = "
                             "CSF + GM + WM, data range = truth max - min there; CRC activity-referenced, shell background",
        "gaussian_fwhm_mm": DEMO_GAUSSIAN_FWHM_MM,
        "lesions": n_lesions,
        "shape": list(pred.shape),
        "spacing_mm": [round(s, 4) for s in pred.spacing],
        "orientation": pred.orientation,
        "template": "MNI152 2009 (nilearn package data) on the IXI grid, 2 mm" + (f", {crop}^3 crop" if crop else ""),
        "simulation": {k: v for k, v in pet.params.items() if k not in ("regions", "seconds")},
        "seconds": {k: round(v, 2) for k, v in seconds.items()},
        # CPU time of this process over every stage (all threads): the compute, whatever else runs.
        "cpu_seconds": round(cpu_seconds, 2),
        "files": {k: str(p) for k, p in paths.items()},
    }
    atomic_write_text(paths["metrics_json"], json.dumps(summary, indent=2, default=str) + "\n")
    if show_progress:
        console.print(f"wrote {', '.join(DEMO_FILES)} to {escape(str(out_dir))} in {seconds['total']:.1f} s", highlight=False)
    return {**summary, "tables": [_metrics_table({k: metrics[k] for k in candidates}, labels, n_lesions)]}
