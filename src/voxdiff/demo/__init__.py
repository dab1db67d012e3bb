"""``voxdiff demo``: the shipped models at work on the MNI152 template inside nilearn, offline.

Three demos, one per task (:data:`DEMO_TASKS`), none needing data, a download or a GPU:

* ``translate`` (:mod:`voxdiff.demo.pet`): a projection-simulated 5 %-dose brain PET denoised by
  the Gaussian post-filter and by PPDM, both scored against the noise-free truth.
* ``segment`` (:mod:`voxdiff.demo.segment`): CSF/GM/WM segmentation of the MNI152 T1 with a
  pre-segmentation network and PD-DDPM, scored against the template's tissue maps.
* ``synthesize`` (:mod:`voxdiff.demo.synthesize`): new T1 heads from the IDM, checked next to
  the template.

The template handling shared by all three is in :mod:`voxdiff.demo.mni`. Each demo returns
what its ``metrics.json`` holds plus ``tables`` (:class:`~voxdiff.demo.common.DemoTable`) for the
CLI to print.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from voxdiff.demo.common import DemoTable
from voxdiff.demo.mni import MniOnIxiGrid, mni_on_ixi_grid
from voxdiff.demo.montage import display as _display
from voxdiff.demo.pet import (DEMO_DOSE, DEMO_FILES, DEMO_GAUSSIAN_FWHM_MM, DEMO_MODEL, DEMO_SETTINGS, DEMO_SIMULATION,
                              demo_phantom, run_pet_demo, simulate_demo_pet)
from voxdiff.demo.segment import SEGMENT_FILES, SEGMENT_MODEL, SEGMENT_PRESEG_MODEL, run_segment_demo
from voxdiff.demo.synthesize import (SYNTHESIS_MODEL, SYNTHESIS_SAMPLER, SYNTHESIS_STEPS, run_synthesis_demo,
                                     synthesis_files)
from voxdiff.errors import VoxdiffError

__all__ = ["DEMO_MODEL", "DEMO_DOSE", "DEMO_GAUSSIAN_FWHM_MM", "DEMO_SETTINGS", "DEMO_SIMULATION", "DEMO_FILES",
           "DEMO_TASKS", "DemoTable", "MniOnIxiGrid", "demo_phantom", "mni_on_ixi_grid", "simulate_demo_pet", "run_demo", "run_pet_demo",
           "run_segment_demo", "run_synthesis_demo", "SEGMENT_FILES", "SEGMENT_MODEL", "SEGMENT_PRESEG_MODEL",
           "SYNTHESIS_MODEL", "SYNTHESIS_SAMPLER", "SYNTHESIS_STEPS", "synthesis_files", "_display"]

#: Demo tasks and the ``pretrained:NAME`` models each runs by default.
DEMO_TASKS: dict[str, tuple[str, ...]] = {
    "translate": (DEMO_MODEL,),
    "segment": (SEGMENT_PRESEG_MODEL, SEGMENT_MODEL),
    "synthesize": (SYNTHESIS_MODEL,),
}


def run_demo(out_dir: str | Path, *, task: str = "translate", steps: int | None = None, samples: int = 4,
             seed: int = 0, crop: int | None = None, model: str | None = None, preseg_model: str | None = None,
             start_step: int | None = None, sampler: str | None = None, show_progress: bool = True,
             console=None) -> dict[str, Any]:
    """Run the demo of ``task`` into ``out_dir``; returns what its ``metrics.json`` holds (+ ``tables``).

    ``model`` / ``preseg_model`` replace the task's pretrained models (checkpoints or
    ``pretrained:NAME``). Options a task does not take are refused: ``preseg_model`` and
    ``start_step`` belong to ``segment``, ``sampler`` to ``synthesize``, ``crop`` (a test size)
    to ``translate`` and ``segment``. ``steps`` None means each model's default (for
    ``synthesize``: :data:`SYNTHESIS_STEPS` with :data:`SYNTHESIS_SAMPLER`).
    """
    if task not in DEMO_TASKS:
        raise VoxdiffError(f"unknown demo task '{task}' (use {', '.join(DEMO_TASKS)})")
    given = {"--preseg-model": (preseg_model, ("segment",)), "--start-step": (start_step, ("segment",)),
             "--sampler": (sampler, ("synthesize",)), "--size small": (crop, ("translate", "segment"))}
    for option, (value, tasks) in given.items():
        if value is not None and task not in tasks:
            raise VoxdiffError(f"{option} applies to 'voxdiff demo --task {' or '.join(tasks)}', not to --task {task}")
    common = dict(samples=samples, steps=steps, seed=seed, show_progress=show_progress, console=console)
    if task == "translate":
        return run_pet_demo(out_dir, crop=crop, model=model or DEMO_MODEL, **common)
    if task == "segment":
        return run_segment_demo(out_dir, crop=crop, start_step=start_step, model=model or SEGMENT_MODEL,
                                preseg_model=preseg_model or SEGMENT_PRESEG_MODEL, **common)
    common["steps"] = SYNTHESIS_STEPS if steps is None else steps
    return run_synthesis_demo(out_dir, sampler=sampler or SYNTHESIS_SAMPLER, model=model or SYNTHESIS_MODEL, **common)
