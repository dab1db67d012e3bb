"""``voxdiff demo --task segment``: tissue segmentation (CSF, GM, WM) of the MNI152 T1 with PD-DDPM, offline.

The skull-stripped MNI152 2009 T1 inside nilearn is brought onto the IXI training grid
(:func:`voxdiff.demo.mni.mni_on_ixi_grid`: PSR, 120 x 120 x 90 at 2 mm, IXI brain intensities),
pre-segmented by ``pretrained:tissue-preseg`` and segmented by ``pretrained:tissue-pdddpm``
started from that pre-segmentation (an ensemble of samples: mean probabilities, labels, entropy).
Both are scored with Dice against a reference made from nilearn's GM/WM probability maps
(a population average, not a segmentation of this image by another method: see docs/demo.md).
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
from voxdiff.demo.mni import IXI_SHAPE, TISSUE_CLASSES, mni_on_ixi_grid
from voxdiff.demo.montage import brain_slices, display, tissue_colormap
from voxdiff.errors import VoxdiffError

__all__ = ["SEGMENT_MODEL", "SEGMENT_PRESEG_MODEL", "SEGMENT_FILES", "run_segment_demo", "tissue_dice"]

SEGMENT_MODEL = "pretrained:tissue-pdddpm"
SEGMENT_PRESEG_MODEL = "pretrained:tissue-preseg"
SEGMENT_FILES = ("t1.nii.gz", "preseg.nii.gz", "pdddpm.nii.gz", "probs.nii.gz", "uncertainty.nii.gz",
                 "reference.nii.gz", "montage.png", "metrics.csv", "metrics.json")


def tissue_dice(pred: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """Dice of each tissue class (CSF, GM, WM) and their mean (``mean``); background is not scored."""
    from voxdiff.metrics import dice

    pred, reference = np.rint(pred).astype(np.int64), np.rint(reference).astype(np.int64)
    scores = {name: float(dice(pred == k, reference == k)) for k, name in enumerate(TISSUE_CLASSES) if k > 0}
    scores["mean"] = float(np.mean(list(scores.values())))
    return scores


def _class_ml(labels: np.ndarray, voxel_ml: float) -> dict[str, float]:
    lab = np.rint(labels).astype(np.int64)
    return {name: round(float((lab == k).sum() * voxel_ml), 2) for k, name in enumerate(TISSUE_CLASSES) if k > 0}


def _check_classes(pipe, spec: str) -> None:
    k = int(getattr(pipe.task, "data_channels", -1))
    if k != len(TISSUE_CLASSES):
        raise VoxdiffError(f"{spec}: the segment demo scores {len(TISSUE_CLASSES)} tissue classes "
                           f"({', '.join(TISSUE_CLASSES)}), but this model has {k}")


def _write_montage(path: Path, t1, preseg, pdddpm, entropy, reference, brain, title: str) -> Path:
    from voxdiff.plots import montage

    aff = t1.affine
    mask = display(brain.astype(np.uint8), aff) > 0
    image = display(t1.array, aff)
    top = float(np.percentile(image[mask], 99.5)) or 1.0
    emax = max(float(np.percentile(display(entropy, aff)[mask], 99.5)), 1e-3)
    panels = {"T1 (MNI152, IXI grid)": image, "pre-segmentation": display(preseg, aff),
              "PD-DDPM": display(pdddpm, aff), f"entropy (0-{emax:.2f})": display(entropy, aff),
              "reference (MNI152 maps)": display(reference, aff)}
    names = list(panels)
    labels = (-0.5, len(TISSUE_CLASSES) - 0.5)
    ranges = {names[0]: (0.0, top), names[1]: labels, names[2]: labels, names[3]: (0.0, emax), names[4]: labels}
    cmap = tissue_colormap()
    cmaps = {names[1]: cmap, names[2]: cmap, names[3]: "inferno", names[4]: cmap}
    return montage(panels, path, title=title, ranges=ranges, cmaps=cmaps, center=brain_slices(mask))


def run_segment_demo(out_dir: str | Path, *, samples: int = 4, steps: int | None = None, start_step: int | None = None,
                     seed: int = 0, crop: int | None = None, model: str = SEGMENT_MODEL,
                     preseg_model: str = SEGMENT_PRESEG_MODEL, show_progress: bool = True,
                     console=None) -> dict[str, Any]:
    """Pre-segment and PD-DDPM-segment the MNI152 T1, score both; returns what ``metrics.json`` holds (+ ``tables``).

    Args:
        out_dir: folder for :data:`SEGMENT_FILES` (created if missing).
        samples: PD-DDPM samples (batched); labels = argmax of their mean probabilities,
            uncertainty = the entropy of that mean.
        steps: reverse steps K from t' (default: the model's).
        start_step: t', where the pre-segmentation enters the chain (default: the model's).
        seed: seed of the sampler.
        crop: an N^3 grid around the brain centre instead of IXI's 120 x 120 x 90 (tests).
        model: the PD-DDPM ``segmentation`` model; ``preseg_model``: its ``preseg`` network.
        show_progress: stage lines and progress bars on ``console``.
    """
    check_counts(samples=samples, steps=steps)
    check_crop(crop)
    if start_step is not None and start_step < 0:
        raise VoxdiffError(f"--start-step must be >= 0, got {start_step}")
    console = default_console(console)
    from voxdiff.io import atomic_write_text, save_volume
    from voxdiff.pipelines import load_pipeline

    require_model(preseg_model, "segment")
    require_model(model, "segment")
    pre = load_pipeline(preseg_model, task="preseg")
    pd = load_pipeline(model, task="segmentation")
    for pipe, spec in ((pre, preseg_model), (pd, model)):
        _check_classes(pipe, spec)
    pd.schedule(steps=steps, samples=samples, start_step=start_step)  # option errors before any work
    out_dir = Path(out_dir)
    prepare_out_dir(out_dir, SEGMENT_FILES[0])
    paths = {name.replace(".nii.gz", "").replace(".", "_"): out_dir / name for name in SEGMENT_FILES}
    seconds: dict[str, float] = {}
    t0, c0 = time.perf_counter(), time.process_time()
    shape = IXI_SHAPE if crop is None else (crop,) * 3
    with stage(console, f"MNI152 T1 on the IXI grid ({' x '.join(map(str, shape))}, 2 mm, PSR) and its reference",
               show_progress):
        grid = mni_on_ixi_grid(shape)
        t1 = grid.t1
        save_volume(t1, paths["t1"])
        save_volume(grid.reference, paths["reference"], dtype=np.uint8)
    seconds["template"] = time.perf_counter() - t0

    t = time.perf_counter()
    with stage(console, f"pre-segmentation ({preseg_model})", show_progress):
        pre_out = pre(t1)
        pre_out.save({"labels": paths["preseg"]})
    seconds["preseg"] = time.perf_counter() - t

    t = time.perf_counter()
    with progress_bar(console, "PD-DDPM", show_progress) as progress:
        res = pd(t1, start=pre_out["labels"], samples=samples, steps=steps, start_step=start_step, seed=seed,
                 progress=progress)
    res.save({"labels": paths["pdddpm"], "probs": paths["probs"], "entropy": paths["uncertainty"]})
    seconds["pdddpm"] = time.perf_counter() - t
    info = res.info
    if show_progress:
        console.print(f"[green]✓[/] PD-DDPM with {escape(str(model))} (t' = {info['start_step']}, {plural(info['steps'], 'step')} "
                      f"x {plural(samples, 'sample')}) [dim]{seconds['pdddpm']:.1f} s[/]", highlight=False)

    t = time.perf_counter()
    ref = grid.reference.array
    scores = {"preseg": tissue_dice(pre_out["labels"].array, ref), "pdddpm": tissue_dice(res["labels"].array, ref)}
    voxel_ml = float(np.prod(t1.spacing)) / 1000.0
    volumes = {"preseg": _class_ml(pre_out["labels"].array, voxel_ml), "pdddpm": _class_ml(res["labels"].array, voxel_ml),
               "reference": _class_ml(ref, voxel_ml)}
    names = {"preseg": "pre-segmentation", "pdddpm": f"PD-DDPM (t' {info['start_step']}, K {info['steps']}, "
                                                     f"{plural(samples, 'sample')})"}
    title = (f"voxdiff demo: tissue segmentation of the MNI152 T1 (radiological view; labels: CSF blue, GM orange, "
             f"WM white)\nmean Dice against the MNI152 GM/WM-map reference: pre-segmentation "
             f"{scores['preseg']['mean']:.3f}, PD-DDPM {scores['pdddpm']['mean']:.3f}")
    _write_montage(paths["montage_png"], t1, pre_out["labels"].array, res["labels"].array, res["entropy"].array, ref,
                   grid.brain, title)
    seconds["metrics_montage"] = time.perf_counter() - t
    seconds["total"] = time.perf_counter() - t0
    cpu_seconds = time.process_time() - c0

    cols = [k for k in scores["preseg"]]
    atomic_write_text(paths["metrics_csv"], csv_text(["image", *(f"dice_{c}" for c in cols)],
                                                     [[n, *(f"{s[c]:.6g}" for c in cols)] for n, s in scores.items()]))
    summary: dict[str, Any] = {
        "task": "segment",
        "model": model,
        "preseg_model": preseg_model,
        "start_step": info["start_step"],
        "steps": info["steps"],
        "samples": samples,
        "seed": seed,
        "classes": list(TISSUE_CLASSES),
        "dice": scores,
        "volumes_ml": volumes,
        "metric_convention": "Dice per tissue class over the whole grid against reference.nii.gz "
                             "(argmax of background, CSF = brain mask - GM - WM, GM, WM of nilearn's MNI152 maps); "
                             "mean over CSF, GM, WM",
        "shape": list(t1.shape),
        "spacing_mm": [round(s, 4) for s in t1.spacing],
        "orientation": t1.orientation,
        "template": "MNI152 2009 T1 (nilearn package data), 2 mm, reoriented to PSR, padded/cropped to "
                    f"{' x '.join(map(str, t1.shape))}, brain intensities mapped onto IXI's",
        "seconds": {k: round(v, 2) for k, v in seconds.items()},
        "cpu_seconds": round(cpu_seconds, 2),
        "files": {k: str(p) for k, p in paths.items()},
    }
    atomic_write_text(paths["metrics_json"], json.dumps(summary, indent=2) + "\n")
    if show_progress:
        console.print(f"wrote {', '.join(SEGMENT_FILES)} to {escape(str(out_dir))} in {seconds['total']:.1f} s", highlight=False)
    table = DemoTable("Dice against the MNI152 GM/WM-map reference (a population average: see docs/demo.md)",
                      [("segmentation", False), *((f"Dice {c}", True) for c in cols)])
    for key, s in scores.items():
        table.rows.append([names[key], *(f"{s[c]:.3f}" for c in cols)])
    return {**summary, "tables": [table]}
