"""The translation task's smoothed-source anchor (``model.anchor_sigma``) and the blur it uses."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from voxdiff.errors import VoxdiffError
from voxdiff.sim.psf import gaussian_blur
from voxdiff.tasks import build_task

MODEL = {"process": {"kind": "bridge", "num_train_timesteps": 100, "prediction_type": "residual", "noise_scale": 0.5},
         "backbone": {"kind": "unet", "base_channels": 8, "channel_mults": [1, 2], "num_res_blocks": 1,
                      "attention_levels": []},
         "puzzle_factor": 2, "gradient_loss_weight": 0.0}


def _task(**model):
    torch.manual_seed(0)
    task = build_task("translation", {**MODEL, **model})
    # A network that outputs zero leaves the anchor alone: x0 is then estimated as the anchor itself.
    task.net.forward = lambda x, t, cond=None: torch.zeros_like(x)
    return task


def test_replicate_blur_keeps_a_constant_volume_and_zero_padding_darkens_its_edge():
    vol = torch.full((1, 1, 8, 8, 8), 3.0)
    assert torch.allclose(gaussian_blur(vol, (1.5,) * 3, padding="replicate"), vol, atol=1e-6)
    zero = gaussian_blur(vol, (1.5,) * 3)
    assert zero[0, 0, 0, 0, 0] < 2.0 and float(zero[0, 0, 4, 4, 4]) > 2.8
    with pytest.raises(ValueError, match="padding"):
        gaussian_blur(vol, (1.0,) * 3, padding="reflect")


@pytest.mark.parametrize("prediction", ["residual", "x0"])
def test_anchored_sampling_starts_from_the_smoothed_source(prediction):
    g = torch.Generator().manual_seed(0)
    y = torch.randn(1, 1, 8, 8, 8, generator=g)
    process = {**MODEL["process"], "prediction_type": prediction}
    out = _task(process=process, anchor_sigma=1.0).predict({"source": y}, steps=1)["output"]
    smooth = gaussian_blur(y, (1.0,) * 3, padding="replicate")
    assert torch.allclose(out, smooth, atol=1e-5)
    plain = _task(process=process).predict({"source": y}, steps=1)["output"]
    assert torch.allclose(plain, y if prediction == "residual" else torch.zeros_like(y), atol=1e-5)


def test_anchored_loss_is_measured_against_the_smoothed_source():
    g = torch.Generator().manual_seed(1)
    x0, y = torch.randn(2, 1, 8, 8, 8, generator=g), torch.randn(2, 1, 8, 8, 8, generator=g)
    loss, logs = _task(anchor_sigma=1.0)({"target": x0, "source": y}, torch.Generator().manual_seed(2))
    smooth = gaussian_blur(y, (1.0,) * 3, padding="replicate")
    assert float(loss) == pytest.approx(float(F.mse_loss(smooth, x0)), rel=1e-5)
    assert logs["mse"] == pytest.approx(float(loss), rel=1e-6)


def test_an_anchor_needs_an_objective_it_can_shift():
    with pytest.raises(VoxdiffError, match="anchor_sigma"):
        build_task("translation", {**MODEL, "process": {**MODEL["process"], "prediction_type": "epsilon"},
                                   "anchor_sigma": 1.0})
