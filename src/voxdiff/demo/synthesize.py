"""``voxdiff demo --task synthesize``: draw brain MRIs from the shipped IDM, next to the MNI152 template, offline.

``pretrained:ixi-synthesis`` samples new IXI-like T1 heads (fast sampler: DPM-Solver++ in a
few steps). The MNI152 T1 is brought to the model's grid exactly as training brought the IXI
volumes (:func:`voxdiff.demo.mni.mni_on_ixi_grid` at 2 mm, block-averaged by ``data.downsample``)
and normalised as training normalised them; the distribution checks of
:mod:`voxdiff.metrics.synthesis` are computed for every sample and for the template, in the
training's normalised units.
"""

from __future__ import annotations

from rich.markup import escape

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from voxdiff.demo.common import (DemoTable, check_counts, csv_text, default_console, plural, prepare_out_dir,
                                 progress_bar, require_model, stage)
from voxdiff.demo.mni import IXI_SPACING_MM, mni_on_ixi_grid
from voxdiff.demo.montage import brain_slices, display
from voxdiff.errors import VoxdiffError

__all__ = ["SYNTHESIS_MODEL", "SYNTHESIS_SAMPLER", "SYNTHESIS_STEPS", "synthesis_files", "run_synthesis_demo"]

SYNTHESIS_MODEL = "pretrained:ixi-synthesis"
#: The demo's default sampler and steps: DPM-Solver++ (2nd order, deterministic) is good in 10-20 steps.
SYNTHESIS_SAMPLER = "dpmsolver++"
SYNTHESIS_STEPS = 15
_MONTAGE_SAMPLES = 6  # more columns than this make the picture unreadable


def synthesis_files(samples: int) -> tuple[str, ...]:
    """The files the synthesis demo writes for ``samples`` draws."""
    return (*(f"sample_{i}.nii.gz" for i in range(samples)), "template.nii.gz", "montage.png", "metrics.csv",
            "metrics.json")


def _model_grid(pipe, spec: str) -> tuple[tuple[int, ...], str, int, float]:
    """Shape, orientation, downsampling factor and spacing (mm) of the model's samples, checked."""
    import nibabel as nib

    geo = pipe.checkpoint.get("reference_geometry")
    if not geo:
        raise VoxdiffError(f"{spec}: checkpoint has no reference geometry to sample in")
    affine = np.asarray(geo["affine"], dtype=np.float64)
    shape = tuple(int(s) for s in geo["shape"])
    factor = int((pipe.checkpoint["config"].get("data") or {}).get("downsample") or 1)
    spacing = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    if not np.allclose(spacing, IXI_SPACING_MM * factor, atol=0.05):
        raise VoxdiffError(f"{spec}: the model samples at {np.round(spacing, 3).tolist()} mm, but the demo's template "
                           f"is {IXI_SPACING_MM:g} mm x data.downsample {factor} = {IXI_SPACING_MM * factor:g} mm")
    return shape, "".join(nib.aff2axcodes(affine)), factor, float(spacing[0])


def _fmt(x: float | None, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def run_synthesis_demo(out_dir: str | Path, *, samples: int = 4, steps: int | None = SYNTHESIS_STEPS,
                       sampler: str | None = SYNTHESIS_SAMPLER, eta: float | None = None, seed: int = 0,
                       model: str = SYNTHESIS_MODEL, show_progress: bool = True, console=None) -> dict[str, Any]:
    """Draw ``samples`` volumes, check their distribution next to the MNI152 template's; returns what
    ``metrics.json`` holds (+ ``tables``).

    Args:
        out_dir: folder for :func:`synthesis_files` (created if missing).
        samples: volumes drawn one after another from one random stream (as ``voxdiff sample``).
        steps: sampling steps (default :data:`SYNTHESIS_STEPS`; None: the model's).
        sampler: ``dpmsolver++`` (default), ``ddim`` or ``ddpm``; None: the model's.
        eta: sampler stochasticity (default: the sampler's).
        seed: seed of the random stream.
        model: the ``synthesis`` model (a checkpoint path or ``pretrained:NAME``).
        show_progress: stage lines and progress bars on ``console``.
    """
    check_counts(samples=samples, steps=steps)
    console = default_console(console)
    import torch

    from voxdiff.intensity import normalizer_from_dict
    from voxdiff.io import atomic_write_text, save_volume
    from voxdiff.metrics.synthesis import describe, pairwise_rmse, wasserstein_1d
    from voxdiff.models import inference_normalizers
    from voxdiff.pipelines import load_pipeline

    require_model(model, "synthesize")
    pipe = load_pipeline(model, task="synthesis")
    sched = pipe.schedule(steps=steps, sampler=sampler, eta=eta)  # option errors before any work
    if sched.sampler is not None:  # the schedule does not check the name; the first draw would
        from voxdiff.diffusion.samplers import check_sampler_name

        check_sampler_name(sched.sampler, pipe.task.process.kind)
    shape, orientation, factor, spacing = _model_grid(pipe, model)
    role = pipe.task.output_role
    stored = (pipe.checkpoint.get("dataset_normalizers") or {}).get(role)
    dataset_norm = normalizer_from_dict(stored) if stored else None
    out_dir = Path(out_dir)
    files = synthesis_files(samples)
    prepare_out_dir(out_dir, files[0])
    seconds: dict[str, float] = {}
    t0, c0 = time.perf_counter(), time.process_time()

    with stage(console, f"MNI152 T1 on the model's grid ({' x '.join(map(str, shape))}, {spacing:g} mm, "
                        f"{orientation})", show_progress):
        grid = mni_on_ixi_grid(shape, orientation=orientation, downsample=factor)
        norm = inference_normalizers(pipe.checkpoint, {role: grid.t1}, None).get(role)
        template = np.asarray(grid.t1.array if norm is None else norm.forward(grid.t1.array), dtype=np.float32)
        # Written in the samples' units: data units with a per-dataset scaler, else normalised units.
        shown = template if dataset_norm is None else np.asarray(dataset_norm.inverse(template), dtype=np.float32)
        save_volume(grid.t1.with_array(shown), out_dir / "template.nii.gz")
    seconds["template"] = time.perf_counter() - t0

    t = time.perf_counter()
    generator = torch.Generator().manual_seed(int(seed))
    vols, affine = [], None
    for i in range(samples):
        with progress_bar(console, f"sample {i + 1}/{samples}", show_progress) as progress:
            out = pipe(steps=steps, sampler=sampler, eta=eta, generator=generator, progress=progress)
        out.save({"output": out_dir / f"sample_{i}.nii.gz"})
        arr = out["output"].array
        vols.append(np.asarray(arr if dataset_norm is None else dataset_norm.forward(arr), dtype=np.float32))
        affine = out["output"].affine
    seconds["sample"] = time.perf_counter() - t
    info = out.info
    if show_progress:
        console.print(f"[green]✓[/] {plural(samples, 'sample')} from {escape(str(model))} ({info.get('sampler') or 'default sampler'}, "
                      f"{plural(info['steps'], 'step')}) [dim]{seconds['sample']:.1f} s[/]", highlight=False)

    t = time.perf_counter()
    stats = describe([template, *vols], spacing)
    ref_values = stats[0]["values"]
    rows = []
    for name, row in zip(["template", *(f"sample_{i}" for i in range(samples))], stats):
        rows.append({"volume": name, "head_litres": row["head_litres"], "dark": row["tissue_means"][0],
                     "middle": row["tissue_means"][1], "bright": row["tissue_means"][2], "head_mean": row["head_mean"],
                     "w1_to_template": None if name == "template" else wasserstein_1d(row["values"], ref_values)})
    diversity = pairwise_rmse(vols) if samples > 1 else None
    from voxdiff.plots import montage

    mask = display(grid.brain.astype(np.uint8), grid.t1.affine) > 0
    panels = {"MNI152 template": display(template, grid.t1.affine)}
    for i, v in enumerate(vols[:_MONTAGE_SAMPLES]):
        panels[f"sample {i}"] = display(v, affine)
    title = (f"voxdiff demo: IDM samples ({info.get('sampler') or 'model sampler'}, {plural(info['steps'], 'step')}) next "
             f"to the MNI152 T1 (skull-stripped) on the model's {spacing:g} mm grid\nnormalised units, -1..1; "
             f"radiological view")
    montage(panels, out_dir / "montage.png", title=title, ranges={k: (-1.0, 1.0) for k in panels},
            center=brain_slices(mask))
    seconds["checks_montage"] = time.perf_counter() - t
    seconds["total"] = time.perf_counter() - t0
    cpu_seconds = time.process_time() - c0

    keys = ("head_litres", "dark", "middle", "bright", "head_mean", "w1_to_template")
    atomic_write_text(out_dir / "metrics.csv", csv_text(["volume", *keys], [
        [r["volume"], *("" if r[k] is None else f"{r[k]:.6g}" for k in keys)] for r in rows]))
    summary: dict[str, Any] = {
        "task": "synthesize",
        "model": model,
        "sampler": info.get("sampler"),
        "steps": info["steps"],
        "eta": info.get("eta"),
        "samples": samples,
        "seed": seed,
        "checks": rows,
        "pairwise_rmse": diversity,
        "metric_convention": "voxdiff.metrics.synthesis in the training's normalised units: Otsu head mask, 3-class "
                             "k-means tissue means, W1 of head intensities to the template's",
        "shape": list(shape),
        "spacing_mm": spacing,
        "orientation": orientation,
        "template": f"MNI152 2009 T1 (nilearn package data, skull-stripped) on the IXI 2 mm grid, block-averaged by "
                    f"{factor}, normalised as the model's training data",
        "seconds": {k: round(v, 2) for k, v in seconds.items()},
        "cpu_seconds": round(cpu_seconds, 2),
        "files": {name: str(out_dir / name) for name in files},
    }
    atomic_write_text(out_dir / "metrics.json", json.dumps(summary, indent=2) + "\n")
    if show_progress:
        console.print(f"wrote {plural(samples, 'sample')} (sample_*.nii.gz), template.nii.gz, montage.png, metrics.csv "
                      f"and metrics.json to {escape(str(out_dir))} in {seconds['total']:.1f} s", highlight=False)
    caption = ("pairwise RMSE between samples: " + _fmt(diversity) + "; the template is skull-stripped, so its "
               "'head' is the brain only")
    table = DemoTable("distribution checks (normalised units)", [
        ("volume", False), ("head (L)", True), ("dark mean", True), ("middle mean", True), ("bright mean", True),
        ("W1 to template", True)], caption=caption)
    for r in rows:
        table.rows.append([r["volume"], _fmt(r["head_litres"], 2), _fmt(r["dark"]), _fmt(r["middle"]),
                           _fmt(r["bright"]), _fmt(r["w1_to_template"])])
    return {**summary, "tables": [table]}
