"""``voxdiff translate``: volume-to-volume translation with a trained PPDM."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import torch
import typer

from voxdiff.cli.app import app, console


def translate_volume(model: str | Path, input_path: Path, output: Path, *, steps: Optional[int] = None,
                     samples: int = 1, uncertainty: Optional[Path] = None, seed: int = 0,
                     eta: Optional[float] = None, device: str = "cpu", sw_roi: Optional[int] = None,
                     max_voxels: Optional[int] = None, show_progress: bool = True) -> dict:
    """Translate one volume file; outputs in the input's geometry and the target's units."""
    from voxdiff.io import check_writable_dir, load_volume, save_volume
    from voxdiff.models import inference_normalizers, load_model
    from voxdiff.tasks.inference import predict_volume

    check_writable_dir(output)
    if uncertainty is not None:
        check_writable_dir(uncertainty)
        if samples < 2:
            from voxdiff.errors import VoxdiffError

            raise VoxdiffError("--uncertainty needs --samples 2 or more (the std over stochastic samples)")
    task, ckpt = load_model(model, task="translation", device=device)
    inf = ckpt["config"]["inference"]
    vol = load_volume(input_path, role="source")
    norms = inference_normalizers(ckpt, {"source": vol}, "target")
    src_norm, tgt_norm = norms["source"], norms["target"]
    x = torch.as_tensor(np.asarray(src_norm.forward(vol.array), dtype=np.float32))[None, None].to(device)
    k = int(steps or inf["steps"])
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
    save_volume(pred_units, output, like=vol)
    result = {"output": str(output), "steps": k, "samples": samples}
    if uncertainty is not None:
        std = out["std"][0, 0].float().cpu().numpy()
        # Normalisers are affine: a standard deviation scales by the slope only.
        std_units = np.abs(np.asarray(tgt_norm.inverse(std)) - np.asarray(tgt_norm.inverse(np.zeros_like(std))))
        save_volume(std_units.astype(np.float32), uncertainty, like=vol)
        result["uncertainty"] = str(uncertainty)
    return result


@app.command()
def translate(
    model: str = typer.Option(..., "--model", "-m", help="Checkpoint (.pt, or a run folder) or pretrained:NAME."),
    input: Path = typer.Option(..., "--input", "-i", help="Source volume (e.g. low-count PET, T1)."),
    output: Path = typer.Option(..., "--output", "-o", help="Output volume, written in the input's geometry."),
    steps: Optional[int] = typer.Option(None, "--steps", "-k", help="Sampling steps (default: the model's)."),
    samples: int = typer.Option(1, "--samples", "-n", min=1, help="Stochastic samples to average."),
    uncertainty: Optional[Path] = typer.Option(None, "--uncertainty", "-u", help="Write the voxel-wise std over samples here."),
    seed: int = typer.Option(0, "--seed", help="Random seed (stochastic sampling)."),
    eta: Optional[float] = typer.Option(None, "--eta", help="Sampler stochasticity: 0 deterministic, 1 fully stochastic."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda."),
    sw_roi: Optional[int] = typer.Option(None, "--sw-roi", help="Force sliding-window inference with this patch side."),
) -> None:
    """Translate a source volume into the target contrast/dose with a trained PPDM.

    The output is written in the source file's geometry and the target's intensity units.
    With --samples N --uncertainty U, U holds the voxel-wise standard deviation over N
    stochastic bridge samples.

    Example: [cyan]voxdiff translate -m runs/pet/last.pt -i low.nii.gz -o denoised.nii.gz --steps 10[/]
    """
    res = translate_volume(model, input, output, steps=steps, samples=samples, uncertainty=uncertainty,
                           seed=seed, eta=eta, device=device, sw_roi=sw_roi)
    console.print(f"wrote {res['output']} ({res['steps']} steps, {res['samples']} sample(s))"
                  + (f" and {res['uncertainty']}" if "uncertainty" in res else ""))
