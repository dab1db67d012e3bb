"""PPDM translation: a direct bridge from the source volume to the target, on a puzzled grid."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from voxdiff.config.schema import FRACTION, Int, Map, Num, Str, diffusion_model
from voxdiff.diffusion.base import sample_loop
from voxdiff.diffusion.factory import build_process
from voxdiff.errors import VoxdiffError
from voxdiff.losses import gradient_difference_loss
from voxdiff.nets.factory import build_network
from voxdiff.tasks.base import Generators, Schedule, Task, draw_timesteps, randn
from voxdiff.tasks.conditions import TRANSFORMS, ScalarConditions

#: Default bridge stochasticity when several samples are averaged (deterministic samples would all agree).
ENSEMBLE_ETA = 0.3

DEFAULT_MODEL: dict[str, Any] = {
    "process": {"kind": "bridge", "num_train_timesteps": 1000, "prediction_type": "x0"},
    "backbone": {"kind": "unet", "base_channels": 32, "channel_mults": [1, 2, 2], "num_res_blocks": 1,
                 "attention_levels": []},
    "puzzle_factor": 2,
    "gradient_loss_weight": 0.1,
    "channels": 1,
    # Scalar conditions (name -> transform, e.g. {dose: log}); values come from data.conditions.
    "conditions": {},
    "condition_dropout": 0.0,
    # Gaussian sigma in voxels of the source's smoothed copy the network's output is anchored to (0 = off).
    "anchor_sigma": 0.0,
}

#: Prediction types an anchor can shift: those whose x0 estimate is the output plus a volume.
ANCHORED_PREDICTIONS = ("residual", "x0")


class TranslationTask(Task):
    """Volume-to-volume translation (low-count -> full-count PET, T1 -> T2, ...).

    Training: ``x_t`` on the bridge between target and source, the PuzzleNet predicts the
    process's objective from ``(x_t, source, t)``; loss = MSE + ``gradient_loss_weight`` x the
    puzzle-gradient loss on the predicted clean volume. Sampling starts from the source.

    With ``anchor_sigma > 0`` the network predicts its objective relative to a Gaussian-smoothed copy
    of the source: x0 is estimated as ``G(y) + net`` instead of ``y + net`` (residual) or ``net`` (x0).
    The network then learns the detail a filter removes rather than undoing the source's noise voxel
    by voxel (BENCHMARKS.md section 10, session 12: +0.3 to +1.3 dB over the previous r = 2 model;
    it does not rescue r = 4).
    """

    name = "translation"
    roles = ("source", "target")
    input_roles = ("source",)
    output_role = "target"
    model_schema = diffusion_model("bridge", gradient_loss_weight=Num(0.0), channels=Int(1),
                                   conditions=Map(Str(TRANSFORMS)), condition_dropout=FRACTION,
                                   anchor_sigma=Num(0.0))

    def __init__(self, model_cfg: dict) -> None:
        from voxdiff.config import deep_merge

        cfg = deep_merge(DEFAULT_MODEL, model_cfg)
        super().__init__(cfg)
        self.process = build_process(cfg["process"])
        c = int(cfg["channels"])
        self.conditions = ScalarConditions(cfg["conditions"], float(cfg["condition_dropout"]))
        self.net = build_network(cfg["backbone"], in_channels=c, cond_channels=c + self.conditions.channels, out_channels=c,
                                 puzzle_factor=cfg["puzzle_factor"])
        self.grad_weight = float(cfg["gradient_loss_weight"])
        self.anchor_sigma = float(cfg["anchor_sigma"])
        if self.anchor_sigma > 0 and self.process.prediction_type not in ANCHORED_PREDICTIONS:
            raise VoxdiffError(f"model.anchor_sigma needs model.process.prediction_type in {ANCHORED_PREDICTIONS}, "
                               f"got {self.process.prediction_type!r}")

    def _offset(self, source: torch.Tensor) -> torch.Tensor | None:
        """What the anchor adds to the network's output: ``G(y) - y`` (residual) or ``G(y)`` (x0); None if off."""
        if self.anchor_sigma <= 0:
            return None
        from voxdiff.sim.psf import gaussian_blur

        smooth = gaussian_blur(source.float(), (self.anchor_sigma,) * 3, padding="replicate").to(source.dtype)
        return smooth - source if self.process.prediction_type == "residual" else smooth

    def _predict(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor,
                 offset: torch.Tensor | None) -> torch.Tensor:
        out = self.net(x, t, cond=cond)
        return out if offset is None else out + offset.to(out.dtype)

    def forward(self, batch: dict[str, torch.Tensor], generator: Generators = None):
        """Bridge loss (+ puzzle-gradient loss) on a batch of source/target crops."""
        x0, y = batch["target"], batch["source"]
        b = x0.shape[0]
        p = self.process
        t = draw_timesteps(p, b, generator, x0.device)
        noise = randn(x0.shape, generator, x0.device, x0.dtype)
        x_t = p.add_noise(x0, noise, t, source=y)
        feats = self.conditions.encode(batch.get("conditions"), b, generator=generator, drop=True)
        out = self._predict(x_t, t, self._cond(y, feats), self._offset(y))
        target = p.training_target(x0, noise, t, source=y)
        mse = F.mse_loss(out.float(), target.float())
        logs = {"mse": float(mse.detach())}
        loss = mse
        if self.grad_weight > 0:
            x0_hat = p.predict_x0(out.float(), x_t.float(), t, source=y.float())
            gdl = gradient_difference_loss(x0_hat, x0.float())
            loss = loss + self.grad_weight * gdl
            logs["grad"] = float(gdl.detach())
        return loss, logs

    def _cond(self, source: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
        """The network's conditioning: the source, then the scalar conditions as constant channels."""
        if not self.conditions.channels:
            return source
        return torch.cat([source, self.conditions.maps(feats, source)], dim=1)

    @torch.no_grad()
    def predict(self, inputs: dict[str, torch.Tensor], *, steps: int, generator: torch.Generator | None = None,
                samples: int = 1, eta: float | None = None, sampler: str | None = None, progress=None,
                conditions: torch.Tensor | None = None, **_: Any) -> dict[str, torch.Tensor]:
        """Sample the target from ``inputs["source"]`` (``sampler``: a registered name, None = the checkpoint's);
        with ``samples > 1`` also the voxel std. ``conditions``: (B, n) raw values, None = blind."""
        y = inputs["source"]
        b = y.shape[0]
        ys = y.repeat_interleave(samples, dim=0) if samples > 1 else y
        cond = self._cond(ys, self.conditions.encode(conditions, b))
        offset = self._offset(ys)

        def model_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return self._predict(x, t, cond, offset)

        x = sample_loop(model_fn, self.process, tuple(ys.shape), steps=steps, source=ys, generator=generator,
                        eta=eta, sampler=sampler, device=y.device, dtype=y.dtype, progress=progress)
        x = x.reshape(b, samples, *x.shape[1:])
        out = {"output": x.mean(dim=1)}
        if samples > 1:
            out["std"] = x.std(dim=1, unbiased=True)
        return out

    def schedule(self, inference_cfg, *, samples: int = 1, eta: float | None = None, **options) -> Schedule:
        """As :meth:`Task.schedule`; with several samples the default ``eta`` is :data:`ENSEMBLE_ETA`."""
        sched = super().schedule(inference_cfg, samples=samples, eta=eta, **options)
        if eta is None and sched.samples > 1:
            sched.eta = ENSEMBLE_ETA
        return sched

    def validation_metrics(self, pred: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]) -> dict[str, float]:
        """PSNR/SSIM/MAE of output and of the identity (source) baseline, in normalised units."""
        from voxdiff.metrics import image_metrics

        tgt = batch["target"][0, 0].cpu().numpy()
        res = {}
        for name, vol in (("out", pred["output"]), ("src", batch["source"])):
            m = image_metrics(vol[0, 0].cpu().numpy(), tgt, data_range=2.0)
            res.update({f"{name}_psnr": m["psnr"], f"{name}_ssim": m["ssim"], f"{name}_mae": m["mae"]})
        return res
