"""Supervised regression (the strongest simple baseline of PET denoising): a 3D UNet, one pass.

The same backbones and pixel puzzle as PPDM, trained with an L1 or L2 loss straight to the
target (optionally as a residual on the source, optionally with the puzzle-gradient loss), so
that a diffusion model is compared with a network of the same capacity that needs one
evaluation instead of ``K x N``. ``voxdiff train`` trains it, ``voxdiff translate`` serves it.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from voxdiff.config import deep_merge
from voxdiff.config.schema import BACKBONES, TRIPLE, Bool, Int, Kinds, Num, Section, Str
from voxdiff.errors import VoxdiffError
from voxdiff.losses import gradient_difference_loss
from voxdiff.nets.factory import build_network
from voxdiff.tasks.base import Generators, OutputSpec, Schedule, Task

LOSSES = ("l1", "l2")
DEFAULT_MODEL: dict[str, Any] = {
    "backbone": {"kind": "unet", "base_channels": 32, "channel_mults": [1, 2, 2], "num_res_blocks": 1,
                 "attention_levels": []},
    "puzzle_factor": 1,
    "loss": "l1",
    "residual": True,         # predict target - source (the network learns the noise, not the image)
    "gradient_loss_weight": 0.0,
    "channels": 1,
}


class RegressionTask(Task):
    """``target ~ net(source)`` in one network pass (no noise process, no sampling)."""

    name = "regression"
    roles = ("source", "target")
    input_roles = ("source",)
    output_role = "target"
    outputs = {"output": OutputSpec("intensity", "the prediction in the target's units")}
    model_schema = Section({"backbone": Kinds(BACKBONES, default="unet"), "puzzle_factor": TRIPLE,
                            "loss": Str(LOSSES), "residual": Bool(), "gradient_loss_weight": Num(0.0),
                            "channels": Int(1)})

    def __init__(self, model_cfg: dict) -> None:
        cfg = deep_merge(DEFAULT_MODEL, model_cfg)
        if cfg["loss"] not in LOSSES:
            raise VoxdiffError(f"config model.loss must be one of {', '.join(LOSSES)}, got {cfg['loss']!r}")
        super().__init__(cfg)
        c = int(cfg["channels"])
        self.net = build_network(cfg["backbone"], in_channels=c, cond_channels=0, out_channels=c,
                                 puzzle_factor=cfg["puzzle_factor"])
        self.loss = cfg["loss"]
        self.residual = bool(cfg["residual"])
        self.grad_weight = float(cfg["gradient_loss_weight"])

    def _forward_net(self, source: torch.Tensor) -> torch.Tensor:
        # Every backbone is time-conditioned; a regression is the network at a constant t = 0.
        t = torch.zeros(source.shape[0], dtype=torch.long, device=source.device)
        out = self.net(source, t)
        return out + source if self.residual else out

    def forward(self, batch: dict[str, torch.Tensor], generator: Generators = None):
        """L1/L2 (+ puzzle-gradient) loss of the one-pass prediction on a batch of crops."""
        pred = self._forward_net(batch["source"]).float()
        target = batch["target"].float()
        loss = F.l1_loss(pred, target) if self.loss == "l1" else F.mse_loss(pred, target)
        logs = {self.loss: float(loss.detach())}
        if self.grad_weight > 0:
            gdl = gradient_difference_loss(pred, target)
            loss = loss + self.grad_weight * gdl
            logs["grad"] = float(gdl.detach())
        return loss, logs

    @torch.no_grad()
    def predict(self, inputs: dict[str, torch.Tensor], *, steps: int = 0, generator: torch.Generator | None = None,
                **_: Any) -> dict[str, torch.Tensor]:
        """The prediction for ``inputs["source"]``."""
        return {"output": self._forward_net(inputs["source"])}

    def schedule(self, inference_cfg, *, steps: int | None = None, samples: int = 1, eta: float | None = None,
                 sampler: str | None = None, start_step: int | None = None, mode: str | None = None) -> Schedule:
        """One deterministic pass: sampling options do not apply."""
        given = [name for name, v in (("--steps", steps), ("--eta", eta), ("--sampler", sampler),
                                      ("--start-step", start_step), ("--mode", mode)) if v is not None]
        if samples != 1:
            given.append("--samples")
        if given:
            raise VoxdiffError(f"{' / '.join(given)} do not apply to a regression model (one deterministic "
                               f"network pass)")
        return Schedule(steps=0, samples=1)

    def validation_metrics(self, pred: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]) -> dict[str, float]:
        """PSNR/SSIM/MAE of output and of the identity (source) baseline, in normalised units."""
        from voxdiff.tasks.translation import TranslationTask

        return TranslationTask.validation_metrics(self, pred, batch)
