"""DDPM tasks on the shared contract: conditional translation (baselines), synthesis, segmentation.

They differ only in which role is generated, how it is encoded as diffusion data, and
which roles condition the network; the training loss and the sampler are shared.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from voxdiff.config.schema import CONDITIONAL_MODEL_KEYS, Int, Section, Seq, diffusion_model
from voxdiff.diffusion.base import sample_loop
from voxdiff.diffusion.factory import build_process
from voxdiff.nets.factory import build_network
from voxdiff.errors import VoxdiffError
from voxdiff.tasks.base import (Generators, OutputSpec, Schedule, Task, check_count, draw_timesteps, focus_timesteps,
                                randn)

#: Sampling modes of a segmentation model: from a pre-segmentation (PD-DDPM) or from pure noise.
SEGMENTATION_MODES = ("pd", "vanilla")


def coordinate_channels(shape: tuple[int, ...], origin: torch.Tensor | None, full: torch.Tensor | None,
                        device, dtype=torch.float32) -> torch.Tensor:
    """Normalised global coordinates in [-1, 1] (B, 3, X, Y, Z) of a crop (PatchDDM-style).

    ``origin`` (B, 3) is the crop's corner in the volume (the dataset's ``location``; negative
    inside padding) and ``full`` (B, 3) the volume's size (the dataset's ``shape``); without
    them the crop is taken to be the whole volume.
    """
    b, spatial = shape[0], shape[2:]
    if origin is None or full is None:
        origin = torch.zeros(b, 3)
        full = torch.tensor(spatial, dtype=torch.float32).expand(b, 3)
    chans = []
    for ax in range(3):
        idx = torch.arange(spatial[ax], dtype=torch.float32)
        pos = (origin[:, ax:ax + 1].float() + idx[None]) / (full[:, ax:ax + 1].float() - 1).clamp(min=1) * 2 - 1
        view = [b] + [1, 1, 1]
        view[1 + ax] = spatial[ax]
        chans.append(pos.reshape(view).expand(b, *spatial))
    return torch.stack(chans, dim=1).to(device=device, dtype=dtype)


class ConditionalDiffusionTask(Task):
    """DDPM over ``output_role`` (encoded by :meth:`encode`) conditioned on ``cond_roles``.

    Config keys (``model``): ``process`` (a DDPM), ``backbone``, ``puzzle_factor``,
    ``coords`` (append normalised global coordinates, as PatchDDM does, so crops know where
    they are in the volume).
    """

    cond_roles: tuple[str, ...] = ()
    model_schema = diffusion_model("ddpm", **CONDITIONAL_MODEL_KEYS)
    defaults: dict[str, Any] = {
        "process": {"kind": "ddpm", "num_train_timesteps": 1000, "prediction_type": "epsilon"},
        "backbone": {"kind": "unet", "base_channels": 32, "channel_mults": [1, 2, 2], "num_res_blocks": 1},
        "puzzle_factor": 1,
        "coords": False,
        # {focus_max: t, focus_fraction: p}: a share p of training timesteps drawn from 0..t (PD-DDPM).
        "train_timesteps": None,
    }

    def __init__(self, model_cfg: dict) -> None:
        from voxdiff.config import deep_merge

        cfg = deep_merge(self.defaults, model_cfg)
        super().__init__(cfg)
        self.process = build_process(cfg["process"])
        self.coords = bool(cfg["coords"])
        focus = cfg.get("train_timesteps") or {}
        self.focus = (int(focus["focus_max"]), float(focus.get("focus_fraction", 1.0))) if focus else None
        cond_ch = len(self.cond_roles) * int(cfg.get("cond_channels_per_role", 1)) + (3 if self.coords else 0)
        self.data_channels = self.encoded_channels(cfg)
        self.net = build_network(cfg["backbone"], in_channels=self.data_channels, cond_channels=cond_ch,
                                 out_channels=self.data_channels, puzzle_factor=cfg["puzzle_factor"])

    # -- per-task encoding -------------------------------------------------
    def encoded_channels(self, cfg: dict) -> int:
        """Channels of the diffused tensor."""
        return 1

    def encode(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The generated role as diffusion data in [-1, 1]."""
        return batch[self.output_role]

    def decode(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Samples (N, B, C, ...) -> named outputs."""
        out = {"output": x.mean(dim=0)}
        if x.shape[0] > 1:
            out["std"] = x.std(dim=0, unbiased=True)
        return out

    def condition(self, batch: dict[str, torch.Tensor], shape: tuple[int, ...]) -> torch.Tensor | None:
        """Channel-concatenated conditioning (and coordinates), or None."""
        parts = [batch[r] for r in self.cond_roles]
        if self.coords:
            if "coords" in batch:  # whole-volume coordinates windowed with the inputs
                parts.append(batch["coords"])
            else:
                ref = parts[0] if parts else batch.get(self.output_role, torch.empty(0))
                parts.append(coordinate_channels(shape, batch.get("location"), batch.get("shape"), ref.device))
        return torch.cat(parts, dim=1) if parts else None

    # -- contract ---------------------------------------------------------
    def forward(self, batch: dict[str, torch.Tensor], generator: Generators = None):
        """Standard DDPM loss on the encoded target."""
        x0 = self.encode(batch)
        b = x0.shape[0]
        t = draw_timesteps(self.process, b, generator, x0.device)
        if self.focus is not None:
            t = focus_timesteps(t, self.process.num_train_timesteps, *self.focus, generator)
        noise = randn(x0.shape, generator, x0.device, x0.dtype)
        x_t = self.process.add_noise(x0, noise, t)
        cond = self.condition(batch, tuple(x0.shape))
        out = self.net(x_t, t, cond=cond)
        loss = F.mse_loss(out.float(), self.process.training_target(x0, noise, t).float())
        return loss, {"mse": float(loss.detach())}

    @torch.no_grad()
    def predict(self, inputs: dict[str, torch.Tensor], *, steps: int, generator: torch.Generator | None = None,
                samples: int = 1, eta: float | None = None, start: torch.Tensor | None = None,
                start_step: int | None = None, shape: tuple[int, ...] | None = None, progress=None,
                sampler: str | None = None, **_: Any) -> dict[str, torch.Tensor]:
        """Sample ``samples`` outputs per input; optional ``start`` forward-diffused to ``start_step``;
        ``sampler`` is a registered sampler name (None = the checkpoint's)."""
        ref = next(iter(inputs.values())) if inputs else None
        if ref is not None:
            b, spatial, device = ref.shape[0], tuple(ref.shape[2:]), ref.device
        else:
            b, spatial, device = shape[0], tuple(shape[2:]), next(self.net.parameters()).device
        full_shape = (b * samples, self.data_channels, *spatial)
        if self.coords and "coords" not in inputs and ref is not None:
            inputs = {**inputs, "coords": coordinate_channels((b, 1, *spatial), None, None, device)}
        rep = {k: v.repeat_interleave(samples, dim=0) for k, v in inputs.items()}
        cond = self.condition(rep, full_shape)
        start_rep = start.repeat_interleave(samples, dim=0) if start is not None else None

        def model_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return self.net(x, t, cond=cond)

        x = sample_loop(model_fn, self.process, full_shape, steps=steps, start=start_rep, start_step=start_step,
                        generator=generator, eta=eta, sampler=sampler, device=device, progress=progress)
        x = x.reshape(b, samples, *x.shape[1:]).transpose(0, 1)
        return self.decode(x)


class TranslationDDPMTask(ConditionalDiffusionTask):
    """Conditional DDPM translation (the full-3D MONAI and PatchDDM-style baselines)."""

    name = "translation_ddpm"
    roles = ("source", "target")
    input_roles = ("source",)
    output_role = "target"
    cond_roles = ("source",)

    def validation_metrics(self, pred, batch):
        """PSNR/SSIM/MAE of the output in normalised units."""
        from voxdiff.metrics import image_metrics

        m = image_metrics(pred["output"][0, 0].cpu().numpy(), batch["target"][0, 0].cpu().numpy(), data_range=2.0)
        return {"out_psnr": m["psnr"], "out_ssim": m["ssim"], "out_mae": m["mae"]}


class SynthesisTask(ConditionalDiffusionTask):
    """Unconditional DDPM synthesis of ``image`` volumes (IDM's task)."""

    name = "synthesis"
    roles = ("image",)
    input_roles = ()
    output_role = "image"
    cond_roles = ()
    entry_point = "sample"
    outputs = {"output": OutputSpec("intensity", "a new volume in the training data's units")}


class SegmentationTask(ConditionalDiffusionTask):
    """PD-DDPM: diffuse the one-hot mask conditioned on the image; start from a pre-segmentation.

    ``model.num_classes`` counts the background; labels must already be ``0..K-1`` (the data
    config's ``label_map`` merges/renumbers regions).
    """

    name = "segmentation"
    roles = ("image", "label")
    input_roles = ("image",)
    output_role = "label"
    label_roles = ("label",)
    cond_roles = ("image",)
    entry_point = "segment"
    model_schema = diffusion_model("ddpm", num_classes=Int(2), **CONDITIONAL_MODEL_KEYS)
    outputs = {
        "labels": OutputSpec("labels", "argmax of the mean class probabilities"),
        "probs": OutputSpec("probabilities", "mean class probabilities over the samples"),
        "entropy": OutputSpec("map", "entropy of the mean probabilities (total uncertainty)"),
        "variance": OutputSpec("map", "class-probability variance over the samples", min_samples=2),
        "mutual_information": OutputSpec("map", "mutual information (epistemic part of the entropy)", min_samples=2),
    }
    primary_output = "labels"
    start_role = "preseg"
    start_task = "preseg"

    def schedule(self, inference_cfg, *, steps: int | None = None, samples: int = 1, eta: float | None = None,
                 sampler: str | None = None, start_step: int | None = None, mode: str | None = None) -> Schedule:
        """``(t', K)`` for a mode: PD defaults to ``inference.start_step`` (else ``T // 4``) and
        ``inference.steps`` (capped at ``t' + 1``); vanilla to all ``T`` steps from noise."""
        mode = "pd" if mode is None else mode
        if mode not in SEGMENTATION_MODES:
            raise VoxdiffError(f"--mode must be one of {', '.join(SEGMENTATION_MODES)}, got '{mode}'")
        samples = check_count("--samples", samples, 1)
        T = self.num_train_timesteps
        sampler, eta_v = self.sampler_choice(inference_cfg, sampler, eta)
        if mode == "vanilla":
            if start_step is not None:
                raise VoxdiffError("--start-step applies to --mode pd only (vanilla starts from pure noise at T-1)")
            k = check_count("--steps", T if steps is None else steps, 1, T)
            return Schedule(steps=k, samples=samples, eta=eta_v, sampler=sampler, mode=mode)
        t0 = check_count("--start-step", start_step if start_step is not None
                         else (inference_cfg.get("start_step") or T // 4), 0, T - 1)
        k = min(int(inference_cfg.get("steps", 10)), t0 + 1) if steps is None else steps
        if not isinstance(k, bool) and isinstance(k, int) and not 1 <= k <= t0 + 1:
            raise VoxdiffError(f"--steps must lie in 1..{t0 + 1} when starting at --start-step {t0}, got {k}")
        k = check_count("--steps", k, 1, t0 + 1)
        return Schedule(steps=k, samples=samples, eta=eta_v, sampler=sampler, start_step=t0, mode=mode)

    def encode_start(self, labels: torch.Tensor) -> torch.Tensor:
        """A pre-segmentation label map (B, 1, ...) with labels ``0..K-1`` as the diffusion start."""
        lo, hi = int(labels.min()), int(labels.max())
        if lo < 0 or hi > self.data_channels - 1:
            raise VoxdiffError(f"pre-segmentation labels must lie in 0..{self.data_channels - 1} (the model's "
                               f"classes), found {lo}..{hi}; remap them first (voxdiff make-labels)")
        return self.encode_labels(labels.round().long())

    def finalize(self, out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Window blending averages everything, so the labels are re-derived from the blended probabilities."""
        out = dict(out)
        out["labels"] = out["probs"].argmax(dim=1, keepdim=True)
        return out

    def encoded_channels(self, cfg: dict) -> int:
        """One channel per class."""
        return int(cfg["num_classes"])

    def encode(self, batch):
        """Labels -> one-hot in [-1, 1]."""
        from voxdiff.diffusion.masks import encode_mask, labels_to_onehot

        return encode_mask(labels_to_onehot(batch["label"].round().long(), self.data_channels, spatial_dims=3))

    def encode_labels(self, labels: torch.Tensor) -> torch.Tensor:
        """A label map (B, 1, ...) as diffusion data (the pre-segmentation start)."""
        return self.encode({"label": labels})

    def decode(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Samples -> mean probabilities, argmax labels and uncertainty maps."""
        from voxdiff.diffusion.masks import decode_mask, ensemble_statistics

        probs = torch.stack([decode_mask(s) for s in x])
        stats = ensemble_statistics(probs)
        # Every output is (B, C, ...) so that predict_volume can crop and window-blend it;
        # the per-sample label maps therefore put the samples in the channel axis.
        out = {"labels": stats["labels"][:, None].float(), "probs": stats["mean_probs"],
               "entropy": stats["entropy"][:, None], "variance": stats["variance"][:, None],
               "mutual_information": stats["mutual_information"][:, None],
               "sample_labels": probs.argmax(dim=2).transpose(0, 1).float()}
        return out

    def validation_metrics(self, pred, batch):
        """Mean foreground Dice of the argmax labels."""
        lab = pred["labels"][0, 0].long()
        ref = batch["label"][0, 0].round().long()
        dices = []
        for k in range(1, self.data_channels):
            a, b = lab == k, ref == k
            denom = int(a.sum() + b.sum())
            dices.append(1.0 if denom == 0 else 2.0 * int((a & b).sum()) / denom)
        return {"dice": float(sum(dices) / max(len(dices), 1))}


class PreSegmentationTask(Task):
    """The pre-segmentation network: MONAI's UNet trained with Dice + cross-entropy."""

    name = "preseg"
    roles = ("image", "label")
    input_roles = ("image",)
    output_role = "label"
    label_roles = ("label",)
    entry_point = "segment"
    model_schema = Section({"num_classes": Int(2), "channels": Seq(Int(1), min_len=2), "num_res_units": Int(0)},
                           required=("num_classes",))
    outputs = {
        "labels": OutputSpec("labels", "argmax of the softmax probabilities"),
        "probs": OutputSpec("probabilities", "softmax class probabilities"),
        "entropy": OutputSpec("map", "entropy of the softmax probabilities"),
    }
    primary_output = "labels"

    def __init__(self, model_cfg: dict) -> None:
        from monai.losses import DiceCELoss
        from monai.networks.nets import UNet

        cfg = {"channels": [16, 32, 64, 128], "num_res_units": 1, **model_cfg}
        super().__init__(cfg)
        self.num_classes = int(cfg["num_classes"])
        ch = tuple(cfg["channels"])
        self.net = UNet(spatial_dims=3, in_channels=1, out_channels=self.num_classes, channels=ch,
                        strides=(2,) * (len(ch) - 1), num_res_units=int(cfg["num_res_units"]), norm="instance")
        self.net.required_multiple = 2 ** (len(ch) - 1)
        self.loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)

    def forward(self, batch, generator: Generators = None):
        """Dice + cross-entropy on a batch of crops."""
        logits = self.net(batch["image"])
        loss = self.loss_fn(logits.float(), batch["label"].round().long())
        return loss, {"dicece": float(loss.detach())}

    @torch.no_grad()
    def predict(self, inputs, *, steps: int = 0, generator=None, **_: Any):
        """Softmax probabilities and argmax labels."""
        probs = torch.softmax(self.net(inputs["image"]).float(), dim=1)
        return {"labels": probs.argmax(dim=1, keepdim=True).float(), "probs": probs}

    validation_metrics = SegmentationTask.validation_metrics

    def schedule(self, inference_cfg, *, steps: int | None = None, samples: int = 1, eta: float | None = None,
                 sampler: str | None = None, start_step: int | None = None, mode: str | None = None) -> Schedule:
        """One network pass: sampling options do not apply."""
        if mode is not None or start_step is not None or steps is not None:
            raise VoxdiffError("--mode / --start-step / --steps apply to a PD-DDPM model; this --model is a preseg "
                               "model (one network pass)")
        if sampler is not None:
            raise VoxdiffError("--sampler applies to a diffusion model; this --model is a preseg model (one network pass)")
        return Schedule(steps=0, samples=1, mode="preseg")

    def finalize(self, out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Labels and entropy from the (window-blended) probabilities."""
        probs = out["probs"].float()
        return {"probs": probs, "labels": probs.argmax(dim=1, keepdim=True),
                "entropy": -torch.special.xlogy(probs, probs).sum(dim=1, keepdim=True)}

    @property
    def data_channels(self) -> int:
        """Number of classes (shared with the segmentation task's metric)."""
        return self.num_classes
