"""Does a translation config's network leave its initial loss? A 60-step synthetic optimisation check.

The PET race's PPDM at r = 4 (base 96) never left its initial training loss with the residual objective
(BENCHMARKS.md section 10, session 5). This script reproduces that in a minute on synthetic pairs,
without data: smooth random volumes (a 12^3 Gaussian field upsampled trilinearly to the crop, scaled to
[-1, 1]) as targets and the same plus white noise (sd 0.3) as sources; AdamW at the config's lr; the
training loss printed every ``--every`` steps. A network that learns roughly halves its loss within
60 steps; one stuck on the plateau stays at the variance of the residual (~0.09).

Example::

    python benchmarks/objective_check.py --config configs/pet_proj_ppdm_r2_nograd.yaml \\
        --config configs/pet_proj_ppdm_r4_nograd.yaml --config configs/pet_proj_ppdm_r4_nograd.yaml:prediction_type=x0
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F


def synthetic_pair(generator: torch.Generator, size: int, batch: int = 2, noise: float = 0.3) -> dict[str, torch.Tensor]:
    """Smooth target in [-1, 1] and a noisy source of shape (batch, 1, size, size, size)."""
    field = torch.randn(batch, 1, 12, 12, 12, generator=generator)
    target = F.interpolate(field, size=(size,) * 3, mode="trilinear", align_corners=False)
    target = (target - target.min()) / (target.max() - target.min()) * 2 - 1
    return {"target": target, "source": target + noise * torch.randn(target.shape, generator=generator)}


def loss_curve(config: str, *, steps: int, size: int, every: int, seed: int = 0,
               overrides: dict | None = None) -> list[dict]:
    """Training loss of the config's translation network on synthetic pairs (fresh init, seeded)."""
    from voxdiff.tasks import build_task
    from voxdiff.train.config import load_config

    cfg = load_config(config)
    model = dict(cfg["model"])
    lr = float(cfg["train"]["lr"])
    for key, value in (overrides or {}).items():
        if key == "prediction_type":
            model["process"] = {**model.get("process", {}), "prediction_type": value}
        elif key == "base_channels":
            model["backbone"] = {**model.get("backbone", {}), "base_channels": int(value)}
        elif key == "lr":
            lr = float(value)
        elif key == "anchor_sigma":
            model["anchor_sigma"] = float(value)
        else:
            raise SystemExit(f"--config {config}: unknown override {key} "
                             "(prediction_type, base_channels, lr, anchor_sigma)")
    torch.manual_seed(seed)
    task = build_task(cfg["task"], model)
    opt = torch.optim.AdamW(task.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    rows = []
    for step in range(steps + 1):
        loss, logs = task(synthetic_pair(g, size), g)
        opt.zero_grad()
        loss.backward()
        grad = torch.nn.utils.clip_grad_norm_(task.parameters(), float("inf"))
        opt.step()
        if step % every == 0:
            rows.append({"step": step, "loss": float(loss.detach()), "grad_norm": float(grad)})
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", action="append", required=True,
                    help="translation config, optionally :prediction_type=x0,base_channels=32,lr=1e-4,anchor_sigma=1.3 "
                         "(repeatable)")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--size", type=int, default=48, help="crop edge (a multiple of the network's)")
    ap.add_argument("--every", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    report = {}
    for spec in args.config:
        path, _, opts = spec.partition(":")
        overrides = dict(kv.split("=", 1) for kv in opts.split(",") if kv)
        rows = loss_curve(path, steps=args.steps, size=args.size, every=args.every, overrides=overrides)
        report[spec] = rows
        print(f"{spec}: " + ", ".join(f"{r['step']}: {r['loss']:.4f}" for r in rows), flush=True)
    if args.json is not None:
        from voxdiff.io.atomic import atomic_write_text

        atomic_write_text(args.json, json.dumps({"command": " ".join(sys.argv), "curves": report}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
