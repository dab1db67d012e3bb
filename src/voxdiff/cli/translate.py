"""``voxdiff translate``: volume-to-volume translation with a trained PPDM."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import torch
import typer

from voxdiff.cli.app import app, console
from voxdiff.errors import VoxdiffError


def check_translate_options(samples: int, uncertainty: Optional[Path]) -> None:
    """Option checks that need no file (run once before many cases, and again per volume)."""
    if uncertainty is not None and samples < 2:
        raise VoxdiffError("--uncertainty needs --samples 2 or more (the std over stochastic samples)")


def translate_volume(model: str | Path | tuple, input_path: Path, output: Path, *, steps: Optional[int] = None,
                     samples: int = 1, uncertainty: Optional[Path] = None, seed: int = 0,
                     eta: Optional[float] = None, device: str = "cpu", sw_roi: Optional[int] = None,
                     max_voxels: Optional[int] = None, show_progress: bool = True) -> dict:
    """Translate one volume file; outputs in the input's geometry and the target's units.

    ``model`` is a checkpoint spec or an already loaded ``(task, ckpt)`` from :func:`load_model`.
    """
    from voxdiff.io import check_writable_dir, load_volume, save_volume
    from voxdiff.io.atomic import all_or_nothing
    from voxdiff.models import inference_normalizers, inference_steps, load_model
    from voxdiff.tasks.inference import predict_volume

    check_writable_dir(output)
    if uncertainty is not None:
        check_writable_dir(uncertainty)
    check_translate_options(samples, uncertainty)
    task, ckpt = model if isinstance(model, tuple) else load_model(model, task="translation", device=device)
    inf = ckpt["config"]["inference"]
    vol = load_volume(input_path, role="source")
    norms = inference_normalizers(ckpt, {"source": vol}, "target")
    src_norm, tgt_norm = norms["source"], norms["target"]
    x = torch.as_tensor(np.asarray(src_norm.forward(vol.array), dtype=np.float32))[None, None].to(device)
    k = inference_steps(task, ckpt, steps)
    g = torch.Generator().manual_seed(int(seed))
    eta_v = (0.3 if samples > 1 else inf.get("eta")) if eta is None else eta

    from rich.progress import Progress

    with Progress(console=console, transient=True, disable=not show_progress) as bar:
        tid = bar.add_task("translate", total=k)
        out = predict_volume(task, {"source": x}, steps=k, samples=samples, eta=eta_v, generator=g,
                             pad_value=float(x.min()), max_voxels=int(max_voxels or inf["max_voxels"]),
                             roi=sw_roi or inf.get("sw_roi"), overlap=float(inf["sw_overlap"]),
                             progress=lambda i, n: bar.update(tid, completed=i, total=n))
    pred = out["output"][0, 0].float().cpu().numpy()
    pred_units = np.asarray(tgt_norm.inverse(pred), dtype=np.float32)
    result = {"output": str(output), "steps": k, "samples": samples}
    with all_or_nothing() as written:  # no output without its uncertainty map
        written.append(save_volume(pred_units, output, like=vol))
        if uncertainty is not None:
            std = out["std"][0, 0].float().cpu().numpy()
            # Normalisers are affine: a standard deviation scales by the slope only.
            std_units = np.abs(np.asarray(tgt_norm.inverse(std)) - np.asarray(tgt_norm.inverse(np.zeros_like(std))))
            written.append(save_volume(std_units.astype(np.float32), uncertainty, like=vol))
            result["uncertainty"] = str(uncertainty)
    return result


@app.command()
def translate(
    model: str = typer.Option(..., "--model", "-m", help="Checkpoint (.pt, or a run folder) or pretrained:NAME."),
    input: Path = typer.Option(..., "--input", "-i", help="Source volume (e.g. low-count PET, T1), or a folder of them."),
    output: Path = typer.Option(..., "--output", "-o", help="Output volume in the input's geometry (a folder for a folder input)."),
    steps: Optional[int] = typer.Option(None, "--steps", "-k", help="Sampling steps (default: the model's)."),
    samples: int = typer.Option(1, "--samples", "-n", min=1, help="Stochastic samples to average."),
    uncertainty: Optional[Path] = typer.Option(None, "--uncertainty", "-u", help="Write the voxel-wise std over samples here (file or folder)."),
    seed: int = typer.Option(0, "--seed", help="Random seed (stochastic sampling); every case uses it."),
    eta: Optional[float] = typer.Option(None, "--eta", help="Sampler stochasticity: 0 deterministic, 1 fully stochastic."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda (under torchrun: this rank's GPU)."),
    sw_roi: Optional[int] = typer.Option(None, "--sw-roi", help="Force sliding-window inference with this patch side."),
    part_id: Optional[int] = typer.Option(None, "--part-id", help="Run only this share of a folder's cases (0-based)."),
    num_parts: Optional[int] = typer.Option(None, "--num-parts", help="Number of shares (default: torchrun's WORLD_SIZE, else 1)."),
    skip_existing: bool = typer.Option(False, "--skip-existing", help="Skip cases whose outputs exist (resume a pre-empted job)."),
) -> None:
    """Translate a source volume into the target contrast/dose with a trained PPDM.

    The output is written in the source file's geometry and the target's intensity units.
    With --samples N --uncertainty U, U holds the voxel-wise standard deviation over N
    stochastic bridge samples. Given a folder, every volume in it is translated into the
    --output folder under its own file name; --part-id/--num-parts (or torchrun) split the
    cases over processes.

    Example: [cyan]voxdiff translate -m runs/pet/last.pt -i low.nii.gz -o denoised.nii.gz --steps 10[/]

    Example: [cyan]torchrun --nproc_per_node 4 -m voxdiff translate -m runs/pet/last.pt -i lowdose/ -o denoised/ --device cuda[/]
    """
    from voxdiff.cases import plan_cases, prepare_output_folders, resolve_part, run_cases
    from voxdiff.models import load_model
    from voxdiff.train.distributed import rank_device

    check_translate_options(samples, uncertainty)
    part = resolve_part(part_id, num_parts)
    jobs, folder_mode = plan_cases(input, {"output": output, "uncertainty": uncertainty})
    dev = str(rank_device(device))
    kwargs = dict(steps=steps, samples=samples, seed=seed, eta=eta, device=dev, sw_roi=sw_roi)
    if not folder_mode and part.count == 1:
        res = translate_volume(model, input, output, uncertainty=uncertainty, **kwargs)
        console.print(f"wrote {res['output']} ({res['steps']} steps, {res['samples']} sample(s))"
                      + (f" and {res['uncertainty']}" if "uncertainty" in res else ""))
        return
    mine = part.select(jobs)
    if mine:
        prepare_output_folders(mine)
        loaded = load_model(model, task="translation", device=dev)
    run_cases(jobs, lambda job: translate_volume(loaded, job.input, job.outputs["output"],
                                                 uncertainty=job.outputs.get("uncertainty"),
                                                 show_progress=False, **kwargs),
              part=part, skip_existing=skip_existing, log=console.print)
