"""``voxdiff segment``: PD-DDPM segmentation (diffusion started from a pre-segmentation).

PD-DDPM forward-diffuses a pre-segmentation (a label file from any tool, or the argmax of a
trained ``preseg`` network) to an intermediate timestep ``t'`` and runs the reverse process
from there with ``K`` steps, far fewer than from pure noise. ``N`` samples (batched) give
the mean class probabilities, whose argmax is the segmentation, and a voxel-wise
uncertainty map. ``--mode vanilla`` samples from pure noise instead (all ``T`` steps, or
``--steps`` respaced). A ``preseg`` checkpoint given as ``--model`` is run on its own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
import typer

from voxdiff.cli.app import app, console
from voxdiff.errors import VoxdiffError

MODES = ("pd", "vanilla")
UNCERTAINTY_KINDS = {"entropy": "entropy", "variance": "variance", "mi": "mutual_information"}
_SEG_TASKS = ("segmentation", "preseg")


def label_dtype(num_classes: int) -> np.dtype:
    """The smallest integer dtype written for a label map of ``num_classes`` classes."""
    return np.dtype(np.uint8 if num_classes <= 256 else np.int16)


def normalized_image(ckpt: dict, vol, device: str | torch.device = "cpu") -> torch.Tensor:
    """The image normalised as the checkpoint's training did, as a (1, 1, X, Y, Z) tensor."""
    from voxdiff.models import inference_normalizers

    norm = inference_normalizers(ckpt, {"image": vol}, None)["image"]
    arr = vol.array if norm is None else norm.forward(vol.array)
    return torch.as_tensor(np.asarray(arr, dtype=np.float32))[None, None].to(device)


def load_presegmentation(path: str | Path, like, num_classes: int) -> np.ndarray:
    """A pre-segmentation file as int64 labels, checked against the input's geometry and the classes."""
    from voxdiff.data.dataset import check_label_values
    from voxdiff.io import check_same_geometry, load_volume

    pre = load_volume(path, role="pre-segmentation")
    check_same_geometry(like, pre, what=f"--preseg {path}")
    arr = check_label_values(pre, f"{path} (pre-segmentation)")
    lo, hi = int(arr.min()), int(arr.max())
    if lo < 0 or hi > num_classes - 1:
        raise VoxdiffError(f"{path}: pre-segmentation labels must lie in 0..{num_classes - 1} (the model's classes), "
                           f"found {lo}..{hi}; remap them first (voxdiff make-labels)")
    return arr.astype(np.int64)


def _window_kwargs(ckpt: dict, max_voxels: Optional[int], sw_roi: Optional[int]) -> dict[str, Any]:
    inf = ckpt["config"]["inference"]
    return {"max_voxels": int(max_voxels or inf["max_voxels"]), "roi": sw_roi or inf.get("sw_roi"),
            "overlap": float(inf["sw_overlap"])}


def run_preseg(task, ckpt: dict, vol, *, device: str = "cpu", max_voxels: Optional[int] = None,
               sw_roi: Optional[int] = None) -> dict[str, torch.Tensor]:
    """Softmax probabilities (1, K, ...) and argmax labels (1, 1, ...) of a ``preseg`` model on a volume."""
    from voxdiff.tasks.inference import predict_volume

    x = normalized_image(ckpt, vol, device)
    out = predict_volume(task, {"image": x}, steps=0, pad_value=float(x.min()), **_window_kwargs(ckpt, max_voxels, sw_roi))
    probs = out["probs"].float()
    return {"probs": probs, "labels": probs.argmax(dim=1, keepdim=True),
            "entropy": (-torch.special.xlogy(probs, probs).sum(dim=1, keepdim=True))}


def resolve_schedule(task, ckpt: dict, mode: str, start_step: Optional[int], steps: Optional[int]) -> tuple[Optional[int], int]:
    """``(t', K)`` for a mode: PD defaults to the config's ``inference.start_step`` (else ``T // 4``)
    and ``inference.steps`` (capped at ``t' + 1``); vanilla to all ``T`` steps from noise."""
    inf = ckpt["config"]["inference"]
    T = int(task.process.num_train_timesteps)
    if mode == "vanilla":
        if start_step is not None:
            raise VoxdiffError("--start-step applies to --mode pd only (vanilla starts from pure noise at T-1)")
        k = T if steps is None else int(steps)
        if not 1 <= k <= T:
            raise VoxdiffError(f"--steps must lie in 1..{T} for this {T}-step model, got {k}")
        return None, k
    t0 = int(start_step if start_step is not None else inf.get("start_step") or T // 4)
    if not 0 <= t0 <= T - 1:
        raise VoxdiffError(f"--start-step must lie in 0..{T - 1} for this {T}-step model, got {t0}")
    k = int(steps) if steps is not None else min(int(inf["steps"]), t0 + 1)
    if not 1 <= k <= t0 + 1:
        raise VoxdiffError(f"--steps must lie in 1..{t0 + 1} when starting at --start-step {t0}, got {k}")
    return t0, k


def run_pdddpm(task, ckpt: dict, vol, *, start_labels: Optional[np.ndarray], mode: str = "pd",
               start_step: Optional[int] = None, steps: Optional[int] = None, samples: int = 1, seed: int = 0,
               eta: Optional[float] = None, device: str = "cpu", max_voxels: Optional[int] = None,
               sw_roi: Optional[int] = None, progress: Callable[[int, int], None] | None = None
               ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Sample a segmentation task on one volume; returns (outputs of the task, schedule info).

    Outputs are (1, C, X, Y, Z) on the input grid: ``probs`` (mean class probabilities),
    ``labels`` (their argmax), ``entropy``, ``variance``, ``mutual_information`` and
    ``sample_labels`` (one channel per sample).
    """
    from voxdiff.tasks.inference import predict_volume

    if mode not in MODES:
        raise VoxdiffError(f"--mode must be one of {', '.join(MODES)}, got '{mode}'")
    if samples < 1:
        raise VoxdiffError(f"--samples must be >= 1, got {samples}")
    t0, k = resolve_schedule(task, ckpt, mode, start_step, steps)
    x = normalized_image(ckpt, vol, device)
    start = None
    if mode == "pd":
        if start_labels is None:
            raise VoxdiffError("PD-DDPM needs a pre-segmentation: give --preseg FILE or --preseg-model CKPT "
                               "(or sample from noise with --mode vanilla)")
        lab = torch.as_tensor(np.asarray(start_labels, dtype=np.int64)).reshape(1, 1, *x.shape[2:])
        start = task.encode_labels(lab).to(device)
    g = torch.Generator().manual_seed(int(seed))
    eta_v = ckpt["config"]["inference"].get("eta") if eta is None else float(eta)
    out = predict_volume(task, {"image": x}, steps=k, samples=int(samples), eta=eta_v, generator=g,
                         start=start, start_step=t0, pad_value=float(x.min()), progress=progress,
                         **_window_kwargs(ckpt, max_voxels, sw_roi))
    # Window blending averages everything, so the labels are re-derived from the blended probabilities.
    out["labels"] = out["probs"].argmax(dim=1, keepdim=True)
    info = {"mode": mode, "start_step": t0, "steps": k, "samples": int(samples), "nfe": k * int(samples),
            "eta": eta_v}
    return out, info


def check_segment_options(mode: str, uncertainty_kind: str, preseg, preseg_model, samples: int) -> None:
    """Option checks that need no file (run once before many cases, and again per volume)."""
    if mode not in MODES:
        raise VoxdiffError(f"--mode must be one of {', '.join(MODES)}, got '{mode}'")
    if uncertainty_kind not in UNCERTAINTY_KINDS:
        raise VoxdiffError(f"--uncertainty-kind must be one of {', '.join(UNCERTAINTY_KINDS)}, got '{uncertainty_kind}'")
    if preseg is not None and preseg_model is not None:
        raise VoxdiffError("give either --preseg FILE or --preseg-model CKPT, not both")
    if samples < 1:
        raise VoxdiffError(f"--samples must be >= 1, got {samples}")
    if mode == "vanilla" and (preseg is not None or preseg_model is not None):
        raise VoxdiffError("--mode vanilla samples from pure noise; drop --preseg / --preseg-model")


def segment_volume(model: str | Path | tuple, input_path: Path, output: Path, *, preseg: Optional[Path] = None,
                   preseg_model: Optional[str | Path | tuple] = None, start_step: Optional[int] = None,
                   steps: Optional[int] = None, samples: int = 1, uncertainty: Optional[Path] = None,
                   uncertainty_kind: str = "entropy", probs: Optional[Path] = None, seed: int = 0,
                   mode: str = "pd", eta: Optional[float] = None, device: str = "cpu",
                   sw_roi: Optional[int] = None, max_voxels: Optional[int] = None,
                   show_progress: bool = True) -> dict[str, Any]:
    """Segment one volume file; every output is written in the input's geometry, only after all succeeded.

    ``model`` / ``preseg_model`` are checkpoint specs or already loaded ``(task, ckpt)`` pairs.
    """
    from voxdiff.io import check_writable_dir, load_volume, save_volume
    from voxdiff.io.atomic import all_or_nothing, full_suffix
    from voxdiff.models import load_model

    # Validate every argument and output path before any model runs.
    check_segment_options(mode, uncertainty_kind, preseg, preseg_model, samples)
    for path in (output, uncertainty, probs):
        if path is not None:
            check_writable_dir(path)
    if probs is not None and full_suffix(Path(probs)).lower() not in (".nii", ".nii.gz"):
        raise VoxdiffError(f"{probs}: --probs is written as a 4D NIfTI; use a .nii.gz name")

    task, ckpt = model if isinstance(model, tuple) else load_model(model, device=device)
    if ckpt["task"] not in _SEG_TASKS:
        raise VoxdiffError(f"{ckpt['path']}: checkpoint is for task '{ckpt['task']}', segment needs a "
                           f"'segmentation' (PD-DDPM) or 'preseg' model")
    num_classes = int(task.data_channels)
    vol = load_volume(input_path, role="image")
    result: dict[str, Any] = {"output": str(output), "num_classes": num_classes}

    if ckpt["task"] == "preseg":
        if preseg is not None or preseg_model is not None:
            raise VoxdiffError("--preseg / --preseg-model apply to a PD-DDPM model; this --model is itself a preseg model")
        if mode != "pd" or start_step is not None or steps is not None:
            raise VoxdiffError("--mode / --start-step / --steps apply to a PD-DDPM model; this --model is a preseg "
                               "model (one network pass)")
        if uncertainty is not None and uncertainty_kind != "entropy":
            raise VoxdiffError("a preseg model gives one prediction: only --uncertainty-kind entropy applies")
        out = run_preseg(task, ckpt, vol, device=device, max_voxels=max_voxels, sw_roi=sw_roi)
        result.update(mode="preseg", steps=0, samples=1, nfe=1)
    else:
        if uncertainty is not None and uncertainty_kind != "entropy" and samples < 2:
            raise VoxdiffError(f"--uncertainty-kind {uncertainty_kind} needs --samples 2 or more")
        start_labels = None
        extra_nfe = 0
        if preseg is not None:
            start_labels = load_presegmentation(preseg, vol, num_classes)
        elif preseg_model is not None:
            pre_task, pre_ckpt = (preseg_model if isinstance(preseg_model, tuple)
                                  else load_model(preseg_model, task="preseg", device=device))
            if int(pre_task.num_classes) != num_classes:
                raise VoxdiffError(f"{pre_ckpt['path']}: the preseg model has {pre_task.num_classes} classes but "
                                   f"the PD-DDPM model has {num_classes}")
            pre = run_preseg(pre_task, pre_ckpt, vol, device=device, max_voxels=max_voxels, sw_roi=sw_roi)
            start_labels = pre["labels"][0, 0].cpu().numpy()
            extra_nfe = 1
        from rich.progress import Progress

        with Progress(console=console, transient=True, disable=not show_progress) as bar:
            tid = bar.add_task(f"segment ({mode})", total=None)
            out, info = run_pdddpm(task, ckpt, vol, start_labels=start_labels, mode=mode, start_step=start_step,
                                   steps=steps, samples=samples, seed=seed, eta=eta, device=device,
                                   max_voxels=max_voxels, sw_roi=sw_roi,
                                   progress=lambda i, n: bar.update(tid, completed=i, total=n))
        info["nfe"] += extra_nfe
        result.update(info)

    labels = out["labels"][0, 0].cpu().numpy()
    dtype = label_dtype(num_classes)
    unc_arr = None
    if uncertainty is not None:
        unc_arr = out[UNCERTAINTY_KINDS[uncertainty_kind]][0, 0].float().cpu().numpy().astype(np.float32)
    prob_arr = None
    if probs is not None:
        prob_arr = np.ascontiguousarray(np.moveaxis(out["probs"][0].float().cpu().numpy(), 0, -1), dtype=np.float32)
    with all_or_nothing() as written:  # all outputs or none
        written.append(save_volume(labels.astype(dtype), output, like=vol, dtype=dtype))
        if unc_arr is not None:
            written.append(save_volume(unc_arr, uncertainty, like=vol))
            result["uncertainty"] = str(uncertainty)
            result["uncertainty_kind"] = uncertainty_kind
        if prob_arr is not None:
            written.append(save_volume(prob_arr, probs, like=vol))
            result["probs"] = str(probs)
    return result


@app.command()
def segment(
    model: str = typer.Option(..., "--model", "-m", help="PD-DDPM 'segmentation' checkpoint (or a 'preseg' one, run alone)."),
    input: Path = typer.Option(..., "--input", "-i", help="Image to segment (normalised as in training), or a folder of them."),
    output: Path = typer.Option(..., "--output", "-o", help="Label map (integers 0..K-1) in the input's geometry (a folder for a folder input)."),
    preseg: Optional[Path] = typer.Option(None, "--preseg", help="Pre-segmentation label file (any tool; same grid, labels 0..K-1); for a folder input, a folder of them named like the images."),
    preseg_model: Optional[str] = typer.Option(None, "--preseg-model", help="A trained 'preseg' checkpoint to produce the pre-segmentation."),
    start_step: Optional[int] = typer.Option(None, "--start-step", "-t", help="t': timestep the pre-segmentation is diffused to (default: the model's)."),
    steps: Optional[int] = typer.Option(None, "--steps", "-k", help="Reverse steps K (pd default: the model's; vanilla: all T)."),
    samples: int = typer.Option(1, "--samples", "-n", min=1, help="Samples N (batched) averaged into the mean mask."),
    uncertainty: Optional[Path] = typer.Option(None, "--uncertainty", "-u", help="Write the voxel-wise uncertainty map here (file or folder)."),
    uncertainty_kind: str = typer.Option("entropy", "--uncertainty-kind", help="entropy (of the mean) | variance | mi (mutual information)."),
    probs: Optional[Path] = typer.Option(None, "--probs", help="Write the mean class probabilities here (4D NIfTI, X,Y,Z,K; file or folder)."),
    seed: int = typer.Option(0, "--seed", help="Random seed; every case uses it."),
    mode: str = typer.Option("pd", "--mode", help="pd (start from the pre-segmentation) | vanilla (from pure noise)."),
    eta: Optional[float] = typer.Option(None, "--eta", help="Sampler stochasticity: 0 DDIM, 1 DDPM (default: the model's)."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda (under torchrun: this rank's GPU)."),
    sw_roi: Optional[int] = typer.Option(None, "--sw-roi", help="Force sliding-window inference with this patch side."),
    part_id: Optional[int] = typer.Option(None, "--part-id", help="Run only this share of a folder's cases (0-based)."),
    num_parts: Optional[int] = typer.Option(None, "--num-parts", help="Number of shares (default: torchrun's WORLD_SIZE, else 1)."),
    skip_existing: bool = typer.Option(False, "--skip-existing", help="Skip cases whose outputs exist (resume a pre-empted job)."),
) -> None:
    """Segment an image with PD-DDPM, starting the diffusion from a pre-segmentation.

    The pre-segmentation (--preseg FILE or --preseg-model CKPT) is forward-diffused to t' (--start-step).
    K reverse steps (--steps) of N batched samples (--samples) cost K x N network evaluations.
    The mean probabilities give the labels (--output) and an uncertainty map (--uncertainty).
    --mode vanilla samples from pure noise instead; a preseg --model is run on its own.
    Given a folder, every image in it is segmented into the --output folder under its own file
    name; --part-id/--num-parts (or torchrun) split the cases over processes.

    Example: [cyan]voxdiff segment -m runs/seg_pdddpm/last.pt --preseg-model runs/seg_preseg/last.pt -i t1.nii.gz -o seg.nii.gz -t 250 -k 5 -n 4 -u unc.nii.gz[/]

    Example: [cyan]voxdiff segment -m runs/seg_pdddpm/last.pt --preseg other_tool.nii.gz -i t1.nii.gz -o seg.nii.gz[/]

    Example: [cyan]voxdiff segment -m runs/seg_preseg/last.pt -i t1.nii.gz -o preseg.nii.gz[/]

    Example: [cyan]voxdiff segment -m pd.pt --preseg nnunet_out/ -i images/ -o seg/ --part-id 0 --num-parts 2[/]
    """
    from voxdiff.cases import plan_cases, prepare_output_folders, resolve_part, run_cases
    from voxdiff.models import load_model
    from voxdiff.train.distributed import rank_device

    check_segment_options(mode, uncertainty_kind, preseg, preseg_model, samples)
    part = resolve_part(part_id, num_parts)
    jobs, folder_mode = plan_cases(input, {"output": output, "uncertainty": uncertainty, "probs": probs},
                                   extra_inputs={"preseg": preseg}, output_suffix={"probs": ".nii.gz"})
    dev = str(rank_device(device))
    kwargs = dict(preseg_model=preseg_model, start_step=start_step, steps=steps, samples=samples,
                  uncertainty_kind=uncertainty_kind, seed=seed, mode=mode, eta=eta, device=dev, sw_roi=sw_roi)

    def report(res: dict) -> str:
        desc = ("preseg model" if res["mode"] == "preseg" else
                f"{res['mode']}: t'={res['start_step']}, K={res['steps']}" if res["mode"] == "pd" else
                f"vanilla: K={res['steps']} from noise")
        extras = [res[k] for k in ("uncertainty", "probs") if k in res]
        return (f"wrote {res['output']} ({desc}, {res['samples']} sample(s), {res['nfe']} network evaluations)"
                + (f" and {', '.join(extras)}" if extras else ""))

    if not folder_mode and part.count == 1:
        res = segment_volume(model, input, output, preseg=preseg, uncertainty=uncertainty, probs=probs, **kwargs)
        console.print(report(res))
        return
    mine = part.select(jobs)
    if mine:
        prepare_output_folders(mine)
        kwargs["model"] = load_model(model, device=dev)
        if preseg_model is not None:
            kwargs["preseg_model"] = load_model(preseg_model, task="preseg", device=dev)
    run_cases(jobs, lambda job: segment_volume(input_path=job.input, output=job.outputs["output"],
                                               preseg=job.extra_inputs.get("preseg"),
                                               uncertainty=job.outputs.get("uncertainty"),
                                               probs=job.outputs.get("probs"), show_progress=False, **kwargs),
              part=part, skip_existing=skip_existing, log=console.print)
