"""Whole-volume inference for any task: pad to the network's multiple, optionally slide.

Volumes whose padded size exceeds a voxel budget are processed in overlapping windows
(MONAI's ``sliding_window_inference`` with Gaussian blending); each window runs the task's
full sampler, so memory is bounded by the window, not the volume.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from voxdiff.ops.puzzle import crop_to, pad_spec, pad_to_multiple
from voxdiff.tasks.base import Task


def predict_volume(task: Task, inputs: dict[str, torch.Tensor], *, steps: int, pad_value: float = -1.0,
                   max_voxels: int = 16_777_216, roi: int | tuple[int, int, int] | None = None,
                   overlap: float = 0.25, generator: torch.Generator | None = None,
                   start: torch.Tensor | None = None, shape: tuple[int, int, int] | None = None,
                   **kwargs: Any) -> dict[str, torch.Tensor]:
    """Predict on whole normalised volumes (B, C, X, Y, Z) of any size; outputs cropped back.

    ``start`` (a tensor on the inputs' grid, e.g. an encoded pre-segmentation for PD-DDPM) is
    padded by edge replication and, with sliding windows, cut into the same windows as the
    inputs, then handed to ``task.predict(..., start=...)``. A task without inputs (synthesis)
    samples one volume of spatial ``shape`` (padded to the network's multiple, cropped back).
    """
    multiple = task.required_multiple
    if not inputs:
        if shape is None:
            raise ValueError("predict_volume needs inputs or, for a task without inputs, a shape")
        pads = pad_spec(tuple(shape), multiple)
        padded_shape = tuple(s + a + b for s, (a, b) in zip(shape, pads))
        with torch.no_grad():
            out = task.predict({}, steps=steps, generator=generator, shape=(1, 1, *padded_shape), **kwargs)
        return {k: crop_to(v, pads) for k, v in out.items()}
    roles = list(inputs)
    padded, pads = {}, None
    for r in roles:
        padded[r], pads = pad_to_multiple(inputs[r], multiple, value=pad_value)
    extra: dict[str, torch.Tensor] = {}
    if start is not None:
        ref = inputs[roles[0]]
        if start.shape[0] != ref.shape[0] or tuple(start.shape[2:]) != tuple(ref.shape[2:]):
            raise ValueError(f"start of shape {tuple(start.shape)} does not match the inputs' "
                             f"batch and grid {tuple(ref.shape)}")
        extra["start"] = pad_to_multiple(start.to(ref.dtype), multiple, mode="replicate")[0]
    spatial = tuple(next(iter(padded.values())).shape[2:])
    if getattr(task, "coords", False) and "coords" not in padded:
        # Global coordinates of the padded grid, so each sliding window knows where it is.
        from voxdiff.tasks.conditional import coordinate_channels

        ref = next(iter(padded.values()))
        b = ref.shape[0]
        origin = torch.tensor([-a for a, _ in pads], dtype=torch.float32).expand(b, 3)
        full = torch.tensor([s - a - c for s, (a, c) in zip(spatial, pads)], dtype=torch.float32).expand(b, 3)
        padded["coords"] = coordinate_channels((b, 1, *spatial), origin, full, ref.device, ref.dtype)
        roles.append("coords")
    use_windows = roi is not None or int(np.prod(spatial)) > max_voxels
    with torch.no_grad():
        if not use_windows:
            out = task.predict(padded, steps=steps, generator=generator, **extra, **kwargs)
        else:
            from monai.inferers import sliding_window_inference

            if roi is None:
                side = int(round(max_voxels ** (1 / 3)))
                roi = max(multiple, side - side % multiple)
            roi_t = (roi,) * 3 if isinstance(roi, int) else tuple(roi)
            roi_t = tuple(min(r - r % multiple or multiple, s) for r, s in zip(roi_t, spatial))
            # Extra tensors travel as additional channels so that every window sees its own part.
            names = roles + list(extra)
            tensors = [padded[r] for r in roles] + list(extra.values())
            sizes = [t.shape[1] for t in tensors]
            stacked = torch.cat(tensors, dim=1)

            def predictor(patch: torch.Tensor) -> dict[str, torch.Tensor]:
                parts = dict(zip(names, torch.split(patch, sizes, dim=1)))
                more = {k: parts.pop(k) for k in extra}
                return task.predict(parts, steps=steps, generator=generator, **more, **kwargs)

            out = sliding_window_inference(stacked, roi_t, 1, predictor, overlap=overlap, mode="gaussian",
                                           padding_mode="replicate")
    return {k: crop_to(v, pads) for k, v in out.items()}
