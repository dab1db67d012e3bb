"""Task registry: name -> Task class, and builders from configs/checkpoints."""

from __future__ import annotations

import importlib

from voxdiff.errors import VoxdiffError
from voxdiff.tasks.base import Task

_TASK_MODULES = {
    "translation": "voxdiff.tasks.translation:TranslationTask",
    "translation_ddpm": "voxdiff.tasks.conditional:TranslationDDPMTask",
    "synthesis": "voxdiff.tasks.conditional:SynthesisTask",
    "segmentation": "voxdiff.tasks.conditional:SegmentationTask",
    "preseg": "voxdiff.tasks.conditional:PreSegmentationTask",
    "regression": "voxdiff.tasks.regression:RegressionTask",
}


def task_class(name: str) -> type[Task]:
    """The Task class registered under ``name``."""
    if name not in _TASK_MODULES:
        raise VoxdiffError(f"unknown task '{name}' (known: {', '.join(sorted(_TASK_MODULES))})")
    module, cls = _TASK_MODULES[name].split(":")
    return getattr(importlib.import_module(module), cls)


def task_names() -> list[str]:
    """Every registered task name."""
    return sorted(_TASK_MODULES)


def tasks_for_entry_point(command: str) -> tuple[str, ...]:
    """The tasks whose inference contract names ``command`` (``translate``, ``segment``, ``sample``)."""
    return tuple(n for n in task_names() if task_class(n).entry_point == command)


def build_task(name: str, model_cfg: dict) -> Task:
    """Instantiate the task ``name`` from the ``model`` config section."""
    return task_class(name)(model_cfg)


def _register_schemas() -> None:
    # Every config and checkpoint is validated against its task's own model schema.
    from voxdiff.config.schema import register_model_schema

    for name in _TASK_MODULES:
        register_model_schema(name, task_class(name).model_schema)


_register_schemas()

__all__ = ["Task", "build_task", "task_class", "task_names", "tasks_for_entry_point"]
