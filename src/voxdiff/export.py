"""Export a training checkpoint as a small inference-only model file.

A training checkpoint holds the raw weights, the EMA shadow, the optimizer's moments, the
grad-scaler and RNG states: about four times the size of the network. The exported file keeps
what :func:`voxdiff.models.load_model` needs (task, config, normalisation, one set of weights)
and loads with ``torch.load(weights_only=True)`` like any voxdiff checkpoint. It cannot resume
training.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import torch

from voxdiff.errors import VoxdiffError
from voxdiff.train.checkpoint import load_checkpoint, save_checkpoint

__all__ = ["EXPORT_KEYS", "export_model"]

#: Checkpoint entries carried over as they are (the weights are handled separately).
EXPORT_KEYS = ("task", "config", "step", "normalization", "dataset_normalizers", "split",
               "required_multiple", "reference_geometry", "init")   # init: the model a fine-tune started from


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def export_model(checkpoint: str | Path, output: str | Path, *, use_ema: bool = True, half: bool = False,
                 extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write an inference-only copy of ``checkpoint`` to ``output``; returns a summary dict.

    Args:
        checkpoint: a training checkpoint (``last.pt``) or a run folder.
        output: the ``.pt`` file to write (atomically).
        use_ema: export the EMA weights (the ones validation and inference use) when present.
        half: store floating-point weights as float16 (half the size); loading copies them
            into the float32 network, so inference still runs in float32.
        extra: JSON-like metadata stored under ``export`` (e.g. data licence, model card name).

    The weights go under ``model`` and there is no ``ema`` entry, so ``load_model`` uses them
    whatever its ``use_ema``; ``export`` records the source file, its SHA-256, which weights
    and which storage dtype were kept.
    """
    src = Path(checkpoint)
    ckpt = load_checkpoint(src)
    src = Path(ckpt["path"])
    ema = ckpt.get("ema") or {}
    if use_ema and "shadow" in ema:
        weights, kind = ema["shadow"], "ema"
    elif "model" in ckpt:
        weights, kind = ckpt["model"], "raw"
    else:
        raise VoxdiffError(f"{src}: checkpoint holds no model weights")
    from voxdiff.tasks import build_task

    net = build_task(ckpt["task"], ckpt["config"]["model"])
    try:
        net.load_state_dict(weights)
    except RuntimeError as exc:
        raise VoxdiffError(f"{src}: weights do not fit the architecture its config describes ({str(exc).splitlines()[0]})") from exc
    # Only parameters are rounded: buffers (schedules, statistics) keep their precision.
    params = {name for name, _ in net.named_parameters()}
    dtype = torch.float16 if half else torch.float32
    state = {k: (v.detach().to(dtype) if k in params and v.is_floating_point() else v.detach()).contiguous().clone()
             for k, v in weights.items()}
    payload = {k: ckpt[k] for k in EXPORT_KEYS if k in ckpt}
    payload["model"] = state
    payload["export"] = {
        "source": src.name,
        "source_sha256": _sha256(src),
        "weights": kind,
        "storage_dtype": str(dtype).replace("torch.", ""),
        "parameters": int(sum(p.numel() for p in net.parameters())),
        "exported": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **(extra or {}),
    }
    out = save_checkpoint(output, payload)
    return {"output": str(out), "bytes": out.stat().st_size, **payload["export"]}
