"""``voxdiff demo --task translate``: denoise a simulated 5 %-dose brain PET with the shipped PPDM, offline.

No data download and no ``../shared``: the MNI152 2009 template (T1-derived brain mask, grey-
and white-matter probability maps) ships inside the nilearn wheel. An FDG-like activity is
built from the tissue maps (:func:`voxdiff.sim.pet.simulate_tissue_pet`: GM 4x WM, CSF ~0,
low uptake in a 10 mm shell standing in for skull and scalp), and a full-count and a 5 %
low-count image are simulated with the training data's own settings (5 mm PSF, mean 200
full-dose counts per brain voxel, Poisson noise, binomial thinning). The low-count image is
written to disk and denoised by ``pretrained:pet-denoise`` through
:func:`voxdiff.pipelines.load_pipeline`, the code path of ``voxdiff translate``.
"""

from __future__ import annotations

from rich.markup import escape

import json
import time
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from voxdiff.demo.common import (DemoTable, check_counts, check_crop, csv_text, default_console, plural,
                                 prepare_out_dir, progress_bar, require_model, stage)
from voxdiff.demo.montage import brain_slices, display
from voxdiff.demo.mni import mni152_volumes, window_volume
from voxdiff.io import Volume

__all__ = ["DEMO_MODEL", "DEMO_SIMULATION", "DEMO_FILES", "MniTemplate", "load_mni_template", "simulate_demo_pet",
           "run_pet_demo"]

DEMO_MODEL = "pretrained:pet-denoise"
#: The simulation settings of the model's training data (``voxdiff simulate-pet-dataset`` defaults).
DEMO_SIMULATION: dict[str, float] = {"fwhm_mm": 5.0, "dose_fraction": 0.05, "mean_brain_counts": 200.0,
                                     "head_margin_mm": 10.0}
DEMO_FILES = ("low.nii.gz", "ppdm.nii.gz", "full.nii.gz", "uncertainty.nii.gz", "brain_mask.nii.gz",
              "montage.png", "metrics.csv", "metrics.json")
# Voxels kept around the head shell: the PSF (sigma ~1 voxel at 5 mm / 2 mm) spreads activity ~3 voxels.
_PSF_MARGIN_VOXELS = 4


class MniTemplate(NamedTuple):
    """MNI152 maps at 2 mm in one geometry: GM and WM probabilities and the brain mask."""

    gm: Volume
    wm: Volume
    brain: np.ndarray


def _box(mask: np.ndarray, margin: int, side: int | None) -> tuple[slice, ...]:
    """Bounding box of ``mask`` plus ``margin`` voxels, or a cube of ``side`` voxels at its centre."""
    hit = np.argwhere(mask)
    lo, hi = hit.min(axis=0), hit.max(axis=0) + 1
    if side is None:
        return tuple(slice(max(int(a) - margin, 0), min(int(b) + margin, n)) for a, b, n in zip(lo, hi, mask.shape))
    centre = (lo + hi) // 2
    starts = [int(np.clip(c - side // 2, 0, max(n - side, 0))) for c, n in zip(centre, mask.shape)]
    return tuple(slice(s, min(s + side, n)) for s, n in zip(starts, mask.shape))


def load_mni_template(*, crop: int | None = None) -> MniTemplate:
    """The MNI152 GM/WM/brain-mask templates of the installed nilearn (2 mm), cropped to the head.

    These files are inside the nilearn package, so nothing is downloaded. The volumes are
    cropped to the brain's bounding box plus the head shell and the PSF's reach (the same image
    as the full template, less empty background), or with ``crop=N`` to an N^3 cube at the
    brain's centre (a quick test size).
    """
    import nibabel as nib

    maps = mni152_volumes("gm", "wm", "brain")
    gm, wm = maps["gm"], maps["wm"]
    brain = maps["brain"].array > 0
    spacing = float(min(nib.affines.voxel_sizes(gm.affine)))
    margin = int(np.ceil(DEMO_SIMULATION["head_margin_mm"] / spacing)) + _PSF_MARGIN_VOXELS
    box = _box(brain, margin, crop)
    start = [s.start for s in box]
    size = [s.stop - s.start for s in box]
    return MniTemplate(gm=window_volume(gm, start, size), wm=window_volume(wm, start, size),
                       brain=np.ascontiguousarray(brain[box]))


def simulate_demo_pet(template: MniTemplate, *, seed: int = 0):
    """Full-count and 5 %-count PET on the template (:data:`DEMO_SIMULATION`); a :class:`PetPair`."""
    from voxdiff.sim.pet import simulate_tissue_pet

    return simulate_tissue_pet(template.gm, template.wm, brain_mask=template.brain, seed=seed, **DEMO_SIMULATION)


def _write_montage(path: Path, vols: dict[str, np.ndarray], affine: np.ndarray, brain: np.ndarray,
                   title: str) -> Path:
    """Three orthogonal slices of input, output, reference, error and uncertainty, grey levels shared."""
    from voxdiff.plots import montage

    disp = {k: display(v, affine) for k, v in vols.items()}
    mask = display(brain.astype(np.uint8), affine) > 0
    err = np.abs(disp["ppdm"] - disp["full"])

    def top(a: np.ndarray) -> float:
        v = float(np.percentile(a[mask], 99.5))
        return v if v > 0 else 1.0

    vmax, emax, smax = top(disp["full"]), top(err), top(disp["uncertainty"])
    # Error and uncertainty differ ~10x: each gets its own scale, written in its title.
    panels = {"low-count (5 %)": disp["low"], "PPDM": disp["ppdm"], "full-count": disp["full"],
              f"|PPDM - full| (0-{emax:.0f})": err, f"uncertainty, std (0-{smax:.1f})": disp["uncertainty"]}
    names = list(panels)
    ranges = {**{n: (0.0, vmax) for n in names[:3]}, names[3]: (0.0, emax), names[4]: (0.0, smax)}
    cmaps = {n: "inferno" for n in names[3:]}
    return montage(panels, path, title=title, ranges=ranges, cmaps=cmaps, center=brain_slices(mask))


def _metrics_table(metrics: dict[str, dict[str, float]], labels: dict[str, str]) -> DemoTable:
    table = DemoTable("inside the brain mask, against the full-count image",
                      [("image", False), ("PSNR (dB)", True), ("SSIM", True), ("MAE", True), ("NMSE", True)])
    for key, m in metrics.items():
        table.rows.append([labels[key], f"{m['psnr']:.2f}", f"{m['ssim']:.4f}", f"{m['mae']:.2f}", f"{m['nmse']:.4f}"])
    return table


def run_pet_demo(out_dir: str | Path, *, steps: int | None = None, samples: int = 4, seed: int = 0,
                 crop: int | None = None, model: str = DEMO_MODEL, show_progress: bool = True,
                 console=None) -> dict[str, Any]:
    """Simulate, denoise, score and picture one brain PET; returns what ``metrics.json`` holds (+ ``tables``).

    Args:
        out_dir: folder for :data:`DEMO_FILES` (created if missing).
        steps: sampling steps (default: the model's, 5).
        samples: stochastic samples, batched; the output is their mean and the uncertainty
            their voxel-wise standard deviation (1 sample: no uncertainty map, zeros written).
        seed: seed of the simulation noise and of the sampler.
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

    require_model(model, "translate")  # an unknown model fails before any work
    out_dir = Path(out_dir)
    prepare_out_dir(out_dir, DEMO_FILES[0])
    paths = {name.replace(".nii.gz", "").replace(".", "_"): out_dir / name for name in DEMO_FILES}
    seconds: dict[str, float] = {}
    t0, c0 = time.perf_counter(), time.process_time()
    with stage(console, "MNI152 template (nilearn, offline)", show_progress):
        template = load_mni_template(crop=crop)
    seconds["template"] = time.perf_counter() - t0

    t = time.perf_counter()
    with stage(console, "simulated full-count and 5 %-count PET", show_progress):
        pet = simulate_demo_pet(template, seed=seed)
        save_volume(pet.low, paths["low"])
        save_volume(pet.full, paths["full"])
        save_volume(template.gm.with_array(template.brain.astype(np.uint8)), paths["brain_mask"], dtype=np.uint8)
    seconds["simulate"] = time.perf_counter() - t

    t = time.perf_counter()
    pipe = load_pipeline(model)
    with progress_bar(console, "denoise", show_progress) as progress:
        res = pipe(pet.low, steps=steps, samples=samples, seed=seed, progress=progress)
    pred = res["output"]
    std = res["std"].array if samples > 1 else np.zeros_like(pred.array)
    res.save({"output": paths["ppdm"], **({"std": paths["uncertainty"]} if samples > 1 else {})})
    if samples == 1:
        save_volume(pred.with_array(std), paths["uncertainty"])
    res = res.info
    seconds["denoise"] = time.perf_counter() - t
    if show_progress:
        console.print(f"[green]✓[/] denoised with {escape(str(model))} ({plural(res['steps'], 'step')} x {plural(samples, 'sample')}) "
                      f"[dim]{seconds['denoise']:.1f} s[/]", highlight=False)
    t = time.perf_counter()
    low, full = pet.low.array, pet.full.array
    metrics = {"input": image_metrics(low, full, mask=template.brain),
               "ppdm": image_metrics(pred.array, full, mask=template.brain)}
    labels = {"input": "low-count input (5 %)", "ppdm": f"PPDM ({plural(res['steps'], 'step')}, {plural(samples, 'sample')})"}
    title = (f"voxdiff demo: simulated FDG PET on MNI152, counts per voxel (radiological view: patient right "
             f"on the left)\nPSNR in brain {metrics['input']['psnr']:.1f} dB (5 % counts) -> {metrics['ppdm']['psnr']:.1f} dB "
             f"(PPDM), SSIM {metrics['input']['ssim']:.3f} -> {metrics['ppdm']['ssim']:.3f}")
    _write_montage(paths["montage_png"], {"low": low, "ppdm": pred.array, "full": full, "uncertainty": std},
                   pred.affine, template.brain, title)
    seconds["metrics_montage"] = time.perf_counter() - t
    seconds["total"] = time.perf_counter() - t0
    cpu_seconds = time.process_time() - c0

    keys = ("psnr", "ssim", "mae", "nmse", "data_range")
    atomic_write_text(paths["metrics_csv"], csv_text(["image", *keys], [[name, *(f"{m[k]:.6g}" for k in keys)]
                                                                        for name, m in metrics.items()]))
    summary: dict[str, Any] = {
        "task": "translate",
        "model": model,
        "steps": res["steps"],
        "samples": samples,
        "seed": seed,
        "metrics": {name: {k: float(m[k]) for k in keys} for name, m in metrics.items()},
        "metric_convention": "voxdiff.metrics: full-count image as target, brain mask, data range = target max - min there",
        "shape": list(pred.shape),
        "spacing_mm": [round(s, 4) for s in pred.spacing],
        "orientation": pred.orientation,
        "template": "MNI152 2009 (nilearn package data), 2 mm" + (f", {crop}^3 crop" if crop else ", cropped to the head"),
        "simulation": {k: v for k, v in pet.params.items() if k != "regions"},
        "seconds": {k: round(v, 2) for k, v in seconds.items()},
        # CPU time of this process over every stage (all threads): the compute, whatever else runs.
        "cpu_seconds": round(cpu_seconds, 2),
        "files": {k: str(p) for k, p in paths.items()},
    }
    atomic_write_text(paths["metrics_json"], json.dumps(summary, indent=2) + "\n")
    if show_progress:
        console.print(f"wrote {', '.join(DEMO_FILES)} to {escape(str(out_dir))} in {seconds['total']:.1f} s", highlight=False)
    return {**summary, "tables": [_metrics_table(metrics, labels)]}
