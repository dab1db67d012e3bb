"""Start a training run from another model's weights (``train.init_from``): fine-tuning.

A user fine-tunes a shipped model (``pretrained:NAME``) or one of their checkpoints on their
own data, or grows it: a model that gains inputs (scalar conditions such as the dose) keeps
every weight of the start model, and the first layer's weights for the new input channels
start at zero, so at step 0 the new model computes exactly what the start model did. New
inputs are appended after the existing ones (the source image, then the conditions; the
pixel puzzle keeps each input channel's block contiguous), which is what makes the
leading-channel copy exact.
"""

from __future__ import annotations

from typing import Any

import torch

from voxdiff.errors import VoxdiffError


def transfer_weights(target: dict[str, torch.Tensor], source: dict[str, torch.Tensor],
                     where: str = "train.init_from") -> tuple[dict[str, torch.Tensor], list[str]]:
    """``target``'s state dict filled from ``source``; returns it and the names of the grown weights.

    Every name must be in both with the same shape, except a weight whose dim 1 (input channels)
    is larger in ``target``: its leading channels come from ``source``, the rest are zero.
    Anything else is refused with the first mismatch named.
    """
    missing = [k for k in target if k not in source]
    extra = [k for k in source if k not in target]
    if missing or extra:
        what = (f"this config's network has {missing[0]}, the start model not" if missing else
                f"the start model has {extra[0]}, this config's network not")
        raise VoxdiffError(f"{where}: the start model's network differs from this config's ({what}; "
                           f"{len(missing)} weights missing, {len(extra)} extra): give the same model.backbone "
                           "and puzzle_factor")
    out, grown = {}, []
    for k, t in target.items():
        s = source[k]
        if s.shape == t.shape:
            out[k] = s.to(t.dtype).clone()
        elif (s.dim() == t.dim() >= 2 and s.shape[0] == t.shape[0] and s.shape[2:] == t.shape[2:]
              and s.shape[1] < t.shape[1]):
            w = torch.zeros_like(t)
            w[:, : s.shape[1]] = s.to(t.dtype)
            out[k] = w
            grown.append(k)
        else:
            raise VoxdiffError(f"{where}: weight {k} has shape {tuple(s.shape)} in the start model and "
                               f"{tuple(t.shape)} here: only added input channels (model.conditions) can be grown")
    return out, grown


def read_start_model(spec: str, *, task_name: str) -> dict:
    """The checkpoint ``spec`` (a path or ``pretrained:NAME``) names, loaded safely for :func:`init_from`."""
    from voxdiff.models import resolve_model_path
    from voxdiff.train.checkpoint import load_checkpoint

    return load_checkpoint(resolve_model_path(spec), task=task_name)


def init_from(task: torch.nn.Module, spec: str, *, task_name: str, split: dict[str, list[str]] | None = None,
              start: dict | None = None) -> dict[str, Any]:
    """Load ``spec`` (a checkpoint path or ``pretrained:NAME``; ``start``: it, already read) into ``task``.

    Returns what was done. The start model's EMA weights are taken (the weights it serves). The
    result records the source, its step, the grown weights and, when both runs recorded a split,
    the start model's training cases that are held out here (fine-tuning from a model that saw
    them leaks them).
    """
    from voxdiff.models import served_weights

    ckpt = start if start is not None else read_start_model(spec, task_name=task_name)
    path = ckpt["path"]
    weights = served_weights(ckpt)
    if not isinstance(weights, dict):
        raise VoxdiffError(f"train.init_from {spec}: {path} holds no model weights")
    state, grown = transfer_weights(task.state_dict(), weights, where=f"train.init_from {spec}")
    task.load_state_dict(state)
    leaked: list[str] = []
    src_split = ckpt.get("split")
    if split and isinstance(src_split, dict):
        seen = set(src_split.get("train", []))
        leaked = sorted(c for part in ("val", "test") for c in split.get(part, []) if c in seen)
    return {"spec": str(spec), "path": str(path), "step": int(ckpt.get("step", 0)), "grown": grown,
            "held_out_seen": leaked}
