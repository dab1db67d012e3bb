"""One inference path for every task: input volumes -> normalise -> pad/window -> sample -> outputs
in the input's geometry and units.

The pipeline knows nothing about a particular task: what it runs comes from the task's
inference contract (:class:`voxdiff.tasks.base.Task`): its input roles, its optional start role
(a volume that seeds the sampler, produced by a file or by another pipeline), how it resolves a
schedule, and what each named output is (:class:`voxdiff.tasks.base.OutputSpec`).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import numpy as np
import torch

from voxdiff.errors import VoxdiffError
from voxdiff.io import Volume, check_same_geometry, save_volume
from voxdiff.pipelines.inputs import VolumeLike, as_volume
from voxdiff.tasks import Task
from voxdiff.tasks.base import Schedule

Progress = Callable[[int, int], None]


def label_dtype(num_classes: int) -> np.dtype:
    """The smallest integer dtype written for a label map of ``num_classes`` classes."""
    return np.dtype(np.uint8 if num_classes <= 256 else np.int16)


def check_output_suffix(spec: Any, path: str | Path, asked: str) -> None:
    """Refuse a file name the output's kind cannot be written as (4D probabilities need NIfTI)."""
    if spec.kind == "probabilities":
        from voxdiff.io.atomic import full_suffix

        if full_suffix(Path(path)).lower() not in (".nii", ".nii.gz"):
            raise VoxdiffError(f"{path}: {asked} is written as a 4D NIfTI (X,Y,Z,classes); use a .nii.gz name")


def wants_dicom(path: str | Path, output_format: str | None = None) -> bool:
    """Whether an output goes out as DICOM: ``--output-format dicom``, or a folder named ``dicom``."""
    if output_format not in (None, "auto", "nifti", "dicom"):
        raise VoxdiffError(f"--output-format must be auto, nifti or dicom, got '{output_format}'")
    if output_format in ("nifti", "dicom"):
        return output_format == "dicom"
    return Path(path).name.lower() == "dicom"


class PipelineOutput(Mapping[str, Volume]):
    """Named output volumes (in the input's geometry and units) and what was run (``info``)."""

    def __init__(self, volumes: dict[str, Volume], info: dict[str, Any], kinds: dict[str, str] | None = None) -> None:
        self._volumes = volumes
        self.info = info
        self.kinds = dict(kinds or {})

    def __getitem__(self, name: str) -> Volume:
        if name not in self._volumes:
            raise KeyError(f"no output '{name}' (this prediction has: {', '.join(self._volumes)})")
        return self._volumes[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._volumes)

    def __len__(self) -> int:
        return len(self._volumes)

    def __repr__(self) -> str:
        return f"PipelineOutput({', '.join(f'{k}: {v.shape}' for k, v in self._volumes.items())})"

    def save(self, paths: Mapping[str, str | Path], *, output_format: str | None = None,
             description: str | None = None, class_names: Any = None) -> dict[str, Path]:
        """Write the named outputs to ``paths`` (name -> file or DICOM folder), all or none.

        The outputs are staged under temporary names and renamed into place together
        (:func:`voxdiff.io.atomic.staged_outputs`): if one fails, no output changes, and an
        earlier file being replaced stays as it was. Intensity outputs go back to the input's
        stored units (e.g. SUV -> Bq/ml for a PET series read with ``units="suv"``). As DICOM
        (:func:`wants_dicom`), intensities become a derived series of the input's, label maps a DICOM SEG.
        """
        from voxdiff.io.atomic import staged_outputs

        model = str(self.info.get("model", ""))
        description = description or f"voxdiff {self.info.get('task', '')}".strip()
        written_paths: dict[str, Path] = {}
        with staged_outputs() as stage:
            for name, path in paths.items():
                vol, kind = self[name], self.kinds.get(name, "map")
                tmp = stage.path(path)
                if wants_dicom(path, output_format):
                    _save_dicom(vol, tmp, kind, f"{description} {name}", model, class_names)
                else:
                    if kind in ("intensity", "spread") and vol.meta.get("units") == "suv":
                        from voxdiff.io.dicom import to_input_units

                        vol = vol.with_array(np.asarray(to_input_units(vol.array, vol), dtype=np.float32))
                    dtype = vol.disk_dtype if vol.disk_dtype is not None else np.float32
                    save_volume(vol, tmp, dtype=dtype)
                written_paths[name] = Path(path)
        return written_paths


def _save_dicom(vol: Volume, path: Path, kind: str, description: str, model: str, class_names: Any) -> Path:
    """One output as DICOM: a derived series (intensities, maps) or a DICOM SEG (labels)."""
    from voxdiff.io.dicom import save_dicom_seg

    if kind == "labels":
        labels = np.rint(vol.array).astype(np.int64)
        names = class_names or [f"class {k}" for k in range(1, max(int(labels.max()), 1) + 1)]
        return save_dicom_seg(labels, path, like=vol, class_names=names, description=description, model=model)
    if kind == "probabilities":
        raise VoxdiffError(f"{path}: class probabilities (4D) have no DICOM form here; write them as .nii.gz")
    if kind == "map":  # unitless: no SUV conversion on the way out
        vol = vol.with_array(vol.array)
        vol.meta = {k: v for k, v in vol.meta.items() if k not in ("units", "suv_factor", "suv")}
    return save_volume(vol, path, format="dicom", description=description, model=model)


class Pipeline:
    """A trained task ready for inference (the library's entry point; the CLI calls it too).

    Build one with :func:`load_pipeline`. Call it on one input volume (or a dict role -> input
    for several input roles); it returns a :class:`PipelineOutput`. ``start_pipeline`` (e.g. a
    pre-segmentation network for PD-DDPM) produces the start volume when none is given.
    """

    def __init__(self, task: Task, checkpoint: dict, *, device: str | torch.device = "cpu",
                 start_pipeline: "Pipeline | None" = None) -> None:
        self.task = task
        self.checkpoint = checkpoint
        self.device = torch.device(device)
        if start_pipeline is not None:
            if task.start_role is None:
                raise VoxdiffError(f"a '{task.name}' model takes no start volume, so no --{task.start_task or 'start'}-model")
            if start_pipeline.task.name != task.start_task:
                raise VoxdiffError(f"{start_pipeline.path}: checkpoint is for task '{start_pipeline.task.name}', "
                                   f"the start of a '{task.name}' model needs '{task.start_task}'")
            mine, theirs = getattr(task, "data_channels", None), getattr(start_pipeline.task, "data_channels", None)
            if mine is not None and theirs is not None and int(mine) != int(theirs):
                raise VoxdiffError(f"{start_pipeline.path}: the {task.start_task} model has {theirs} classes but "
                                   f"the {task.name} model has {mine}")
        self.start_pipeline = start_pipeline

    # -- description --------------------------------------------------------------------
    @property
    def name(self) -> str:
        """The task's name (``translation``, ``segmentation``, ...)."""
        return self.task.name

    @property
    def path(self) -> str:
        """Where the checkpoint was loaded from."""
        return str(self.checkpoint.get("path", "<memory>"))

    @property
    def inference_config(self) -> dict:
        """The checkpoint's ``inference`` section (default steps, eta, windows...)."""
        return dict(self.checkpoint["config"].get("inference", {}))

    def check_outputs(self, names: Mapping[str, Any] | list[str], samples: int = 1,
                      options: Mapping[str, str] | None = None) -> None:
        """Refuse outputs the task does not make, or that need more samples, before any work.

        ``options`` maps an output name to the option that asked for it (named in messages).
        """
        options = options or {}
        for name in names:
            spec = self.task.outputs.get(name)
            asked = options.get(name, f"output '{name}'")
            if spec is None:
                raise VoxdiffError(f"{asked}: a {self.name} model has no output '{name}' "
                                   f"(it has: {', '.join(self.task.outputs)})")
            if samples < spec.min_samples:
                raise VoxdiffError(f"{asked} ({spec.description}) needs --samples {spec.min_samples} or more")
            if isinstance(names, Mapping):
                check_output_suffix(spec, names[name], asked)

    def schedule(self, **options: Any) -> Schedule:
        """The schedule a call with these options would run (validated; nothing is computed)."""
        return self.task.schedule(self.inference_config, **options)

    # -- inference ----------------------------------------------------------------------
    def _inputs(self, inputs: VolumeLike | Mapping[str, VolumeLike] | None, affine: Any,
                read: dict[str, Any]) -> dict[str, Volume]:
        roles = self.task.input_roles
        if not roles:
            if inputs is not None:
                raise VoxdiffError(f"a '{self.name}' model takes no input volume (it samples new ones)")
            return {}
        if not isinstance(inputs, Mapping):
            if len(roles) != 1:
                raise VoxdiffError(f"a '{self.name}' model needs the inputs {', '.join(roles)}: pass a dict role -> volume")
            inputs = {roles[0]: inputs}
        missing = [r for r in roles if r not in inputs or inputs[r] is None]
        if missing:
            raise VoxdiffError(f"a '{self.name}' model needs the input(s) {', '.join(missing)}")
        vols = {r: as_volume(inputs[r], affine=affine, role=r, **read) for r in roles}
        first = vols[roles[0]]
        for r in roles[1:]:
            check_same_geometry(first, vols[r], what=f"input '{r}'")
        return vols

    def _start(self, start: VolumeLike | None, like: Volume | None, sched: Schedule, progress: Progress | None,
               options: dict[str, Any]) -> tuple[torch.Tensor | None, int]:
        """The encoded start volume (or None) and the network evaluations it cost."""
        role = self.task.start_role
        needs = role is not None and sched.start_step is not None
        if not needs:
            if start is not None or self.start_pipeline is not None:
                if role is None:
                    raise VoxdiffError(f"this --model is a {self.name} model, which takes no start volume")
                raise VoxdiffError(f"--mode {sched.mode} samples from pure noise; drop --{role} / --{role}-model")
            return None, 0
        if start is not None and self.start_pipeline is not None:
            raise VoxdiffError(f"give either --{role} FILE or --{role}-model CKPT, not both")
        nfe = 0
        if start is None:
            if self.start_pipeline is None:
                raise VoxdiffError(f"PD-DDPM needs a pre-segmentation: give --{role} FILE or --{role}-model CKPT "
                                   f"(or sample from noise with --mode vanilla)")
            pre = self.start_pipeline({r: like for r in self.start_pipeline.task.input_roles},
                                      max_voxels=options.get("max_voxels"), sw_roi=options.get("sw_roi"))
            labels = pre[self.start_pipeline.task.primary_output].array
            nfe = int(pre.info["nfe"])
            what = f"{role} from {self.start_pipeline.path}"
        else:
            from voxdiff.data.dataset import check_label_values

            vol = as_volume(start, role=role)
            what = f"{vol.path if vol.path is not None else role} ({role})"
            if like is not None:
                check_same_geometry(like, vol, what=f"--{role} {vol.path if vol.path is not None else ''}".strip())
            labels = check_label_values(vol, what)
        tensor = torch.as_tensor(np.asarray(labels, dtype=np.float32))[None, None]
        try:
            encoded = self.task.encode_start(tensor)
        except VoxdiffError as exc:
            raise VoxdiffError(f"{what}: {exc}") from exc
        return encoded.to(self.device), nfe

    def _normalizers(self, vols: dict[str, Volume]) -> dict[str, Any]:
        from voxdiff.models import inference_normalizers

        out_role = self.task.output_role
        if not vols:  # sampling: only a per-dataset scaler fixes the output's units
            stored = (self.checkpoint.get("dataset_normalizers") or {}).get(out_role)
            from voxdiff.intensity import normalizer_from_dict

            return {out_role: normalizer_from_dict(stored) if stored else None}
        wants_units = any(s.kind in ("intensity", "spread") for s in self.task.outputs.values())
        return inference_normalizers(self.checkpoint, vols, out_role if wants_units else None)

    def __call__(self, inputs: VolumeLike | Mapping[str, VolumeLike] | None = None, *, start: VolumeLike | None = None,
                 steps: int | None = None, samples: int = 1, seed: int = 0, generator: torch.Generator | None = None,
                 eta: float | None = None, sampler: str | None = None, start_step: int | None = None,
                 mode: str | None = None, affine: Any = None, sw_roi: int | None = None,
                 max_voxels: int | None = None, progress: Progress | None = None, units: str | None = None,
                 series_uid: str | None = None, conditions: Mapping[str, float] | None = None) -> PipelineOutput:
        """Predict on one case; see the class docstring. ``generator`` (else ``seed``) drives every random draw.

        ``units`` / ``series_uid`` apply to inputs given as paths (DICOM: ``units="suv"`` reads a PET
        series as SUV body-weight; outputs are written back in the stored units). ``conditions``: the
        scalar conditions a model was trained with (e.g. ``{"dose": 5}``); a model trained with
        condition dropout also runs without them (blind).
        """
        from voxdiff.tasks.inference import predict_volume

        t0 = time.perf_counter()
        sched = self.schedule(steps=steps, samples=samples, eta=eta, sampler=sampler, start_step=start_step, mode=mode)
        cond_vec = self.task.condition_vector(conditions)
        vols = self._inputs(inputs, affine, {"units": units, "series_uid": series_uid})
        like = next(iter(vols.values())) if vols else None
        start_t, extra_nfe = self._start(start, like, sched, progress, {"max_voxels": max_voxels, "sw_roi": sw_roi})
        norms = self._normalizers(vols)
        tensors = {}
        for role, vol in vols.items():
            norm = norms.get(role)
            arr = vol.array if norm is None else norm.forward(vol.array)
            tensors[role] = torch.as_tensor(np.asarray(arr, dtype=np.float32))[None, None].to(self.device)
        if generator is None:
            generator = torch.Generator().manual_seed(int(seed))
        inf = self.inference_config
        kwargs: dict[str, Any] = {}
        if sched.sampler is not None:
            kwargs["sampler"] = sched.sampler
        if cond_vec is not None:
            kwargs["conditions"] = cond_vec
        if like is None:
            geo = self.checkpoint.get("reference_geometry")
            if not geo:
                raise VoxdiffError(f"{self.path}: checkpoint has no reference geometry to sample in")
            like = Volume(array=np.zeros(tuple(geo["shape"]), np.float32), affine=np.asarray(geo["affine"], np.float64))
            kwargs["shape"] = tuple(geo["shape"])
        pad_value = min((float(t.min()) for t in tensors.values()), default=0.0)
        out = predict_volume(self.task, tensors, steps=sched.steps, samples=sched.samples, eta=sched.eta,
                             generator=generator, start=start_t, start_step=sched.start_step, pad_value=pad_value,
                             max_voxels=int(max_voxels or inf.get("max_voxels", 16_777_216)),
                             roi=sw_roi or inf.get("sw_roi"), overlap=float(inf.get("sw_overlap", 0.25)),
                             progress=progress, **kwargs)
        out = self.task.finalize(out)
        volumes = self._to_volumes(out, like, norms.get(self.task.output_role), sched.samples)
        info = {"task": self.name, "model": self.path, **sched.info(), "seconds": round(time.perf_counter() - t0, 3)}
        if self.task.conditions.names:
            info["conditions"] = dict(conditions or {}) or "blind"
        info["nfe"] += extra_nfe
        return PipelineOutput(volumes, info, {n: self.task.outputs[n].kind for n in volumes})

    def _to_volumes(self, out: dict[str, torch.Tensor], like: Volume, norm: Any, samples: int) -> dict[str, Volume]:
        """Named tensors (1, C, X, Y, Z) -> volumes in the input's geometry and the output's units."""
        result: dict[str, Volume] = {}
        for name, spec in self.task.outputs.items():
            if name not in out or samples < spec.min_samples:
                continue
            t = out[name][0].float().cpu().numpy()
            if spec.kind == "probabilities":
                vol = like.with_array(np.ascontiguousarray(np.moveaxis(t, 0, -1), dtype=np.float32))
                vol.disk_dtype = np.dtype(np.float32)
            elif spec.kind == "labels":
                dtype = label_dtype(int(getattr(self.task, "data_channels", 256)))
                vol = like.with_array(t[0].astype(np.float32))
                vol.disk_dtype = dtype
            else:
                arr = t[0]
                if norm is not None and spec.kind == "intensity":
                    arr = norm.inverse(arr)
                elif norm is not None and spec.kind == "spread":
                    # Normalisers are affine: a standard deviation scales by the slope only.
                    arr = np.abs(np.asarray(norm.inverse(arr)) - np.asarray(norm.inverse(np.zeros_like(arr))))
                vol = like.with_array(np.asarray(arr, dtype=np.float32))
                vol.disk_dtype = np.dtype(np.float32)
            vol.disk_scaling = (1.0, 0.0)
            result[name] = vol
        return result


def load_pipeline(spec: str | Path, *, device: str | torch.device = "cpu", task: str | tuple[str, ...] | None = None,
                  start_model: str | Path | Pipeline | None = None, use_ema: bool = True) -> Pipeline:
    """A :class:`Pipeline` from a checkpoint (file or run folder) or ``pretrained:NAME``.

    ``task`` restricts which tasks are accepted (a command's own check); ``start_model`` is the
    model whose output seeds the sampler (PD-DDPM's pre-segmentation network).

    Example::

        from voxdiff import load_pipeline
        pipe = load_pipeline("pretrained:pet-denoise")
        pipe("low_dose.nii.gz", samples=4)["output"]    # a Volume in the input's geometry
    """
    from voxdiff.models import load_model

    model, ckpt = load_model(spec, task=task, use_ema=use_ema, device=device)
    start = None
    if start_model is not None:
        start = start_model if isinstance(start_model, Pipeline) else load_pipeline(
            start_model, device=device, task=model.start_task or "preseg", use_ema=use_ema)
    return Pipeline(model, ckpt, device=device, start_pipeline=start)
