"""Load trained models: checkpoints on disk or shipped ``pretrained:NAME`` weights."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np
import torch

from voxdiff.errors import VoxdiffError
from voxdiff.intensity import make_normalizer, normalizer_from_dict
from voxdiff.tasks import Task, build_task, task_class
from voxdiff.train.checkpoint import load_checkpoint

PRETRAINED_PREFIX = "pretrained:"
#: Names that shipped once and were superseded: the model that replaced them (its card says why).
PRETRAINED_ALIASES = {"pet-denoise-anydose": "pet-denoise"}


def pretrained_names() -> list[str]:
    """Names of the models shipped inside the package (``pretrained:NAME``)."""
    folder = resources.files("voxdiff") / "pretrained"
    try:
        return sorted(p.name[:-3] for p in folder.iterdir() if p.name.endswith(".pt"))
    except (FileNotFoundError, NotADirectoryError):
        return []


def pretrained_name(spec: str | Path) -> str | None:
    """The shipped model name a ``pretrained:NAME`` spec loads (a superseded name: its successor); None for a path."""
    spec = str(spec)
    if not spec.startswith(PRETRAINED_PREFIX):
        return None
    name = spec[len(PRETRAINED_PREFIX):]
    return PRETRAINED_ALIASES.get(name, name)


def resolve_model_path(spec: str | Path) -> Path:
    """A checkpoint path from a path or ``pretrained:NAME`` (a superseded name resolves to its successor)."""
    name = pretrained_name(spec)
    if name is not None:
        path = Path(str(resources.files("voxdiff") / "pretrained" / f"{name}.pt"))
        if not path.exists():
            known = ", ".join(pretrained_names()) or "none shipped"
            raise VoxdiffError(f"unknown pretrained model '{name}' (available: {known})")
        return path
    return Path(str(spec))


def served_weights(ckpt: dict, use_ema: bool = True) -> dict | None:
    """The state dict a checkpoint serves: its EMA weights when it has them (and ``use_ema``), else the raw ones."""
    return ckpt["ema"]["shadow"] if use_ema and ckpt.get("ema") else ckpt.get("model")


def load_model(spec: str | Path, *, task: str | tuple[str, ...] | None = None, use_ema: bool = True,
               device: str | torch.device = "cpu") -> tuple[Task, dict]:
    """Rebuild a task from a checkpoint and load its (EMA) weights; returns ``(task, checkpoint)``."""
    path = resolve_model_path(spec)
    ckpt = load_checkpoint(path, task=task)  # validates the stored config against the schema
    if not isinstance(ckpt.get("config"), dict) or "model" not in ckpt["config"]:
        raise VoxdiffError(f"{path}: checkpoint has no stored config with a model section to rebuild the network from")
    if isinstance(device, str):
        from voxdiff.config import check_device

        device = check_device(device)
    model = build_task(ckpt["task"], ckpt["config"]["model"])
    weights = served_weights(ckpt, use_ema)
    try:
        model.load_state_dict(weights)
    except RuntimeError as exc:
        raise VoxdiffError(f"{path}: weights do not fit the architecture its config describes ({str(exc).splitlines()[0]})") from exc
    return model.to(device).eval(), ckpt


def inference_normalizers(ckpt: dict, volumes: dict[str, "np.ndarray"], output_role: str | None) -> dict:
    """Normalisers for one case at inference: inputs fitted as in training, the output's from them.

    The output role's volume is what is being predicted, so its normaliser must be fixed
    (window/range), fitted per dataset in training (stored in the checkpoint) or ``same_as`` an
    input role; a per-case fit is refused with a clear message.
    """
    from voxdiff.data import case_normalizers, resolve_normalization

    task_cls = task_class(ckpt["task"])
    specs = resolve_normalization(ckpt.get("normalization", {}), list(task_cls.roles), task_cls.label_roles)
    ds = ckpt.get("dataset_normalizers", {}) or {}
    norms = case_normalizers(volumes, {r: specs[r] for r in volumes}, label_roles=task_cls.label_roles,
                             dataset_normalizers=ds)
    if output_role is not None and output_role not in task_cls.label_roles:
        spec = specs[output_role]
        if spec["mode"] == "same_as":
            norms[output_role] = norms[spec["role"]]
        elif output_role in ds:
            norms[output_role] = normalizer_from_dict(ds[output_role])
        elif spec["mode"] in ("window", "range"):
            norms[output_role] = make_normalizer({k: v for k, v in spec.items() if k not in ("per", "nonzero")},
                                                 np.zeros(1, np.float32))
        else:
            raise VoxdiffError(
                f"the model normalised '{output_role}' per case in training, so its output units are unknown; "
                f"train with normalization.{output_role}: {{per: dataset}} or {{mode: same_as}}")
    return norms
