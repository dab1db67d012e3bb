"""Low-count PET denoising quality: every method trained for the SAME number of steps, then
evaluated on whole held-out volumes in full-count units.

Methods (configs/pet_*.yaml + overrides, trained by voxdiff's Trainer):

* ``full3d``   conditional DDPM, MONAI DiffusionModelUNet; sampled with DDPM-1000 (eta 1, on
               ``--ddpm-cases`` cases: it is slow) and DDIM-50 (eta 0) from the same weights.
* ``patch``    PatchDDM-3D style DDPM with coordinate channels, trained on ``--patch-crop``
               crops, sampled on the whole volume with DDIM-``--ddim-steps``.
* ``ppdm2`` / ``ppdm4`` (+ ``-nograd``: without the puzzle-gradient loss), bridge sampler
               with ``--ppdm-steps`` steps.
* ``identity`` the low-count input itself (already in full-count units).

Evaluation cases are the first ``--eval-cases`` of the trainer's validation split
(``data.val_fraction`` 0.1, ``data.split_seed`` 0: the same for every method). Metrics follow
docs/metrics.md: ``voxdiff.metrics.image_metrics`` inside the brain mask (manifest ``label`` >
0, as benchmarks/translation_eval.py; ``--no-mask`` for the whole volume; whole-volume PSNR/SSIM
are in the JSON too), data range = the target's max - min there, per case. The seam metric
(``voxdiff.losses.seam_metric``) is computed at periods 2 and 4 on the grid the method's
puzzle blocks lie on. ``--eval-crop X,Y,Z`` scores the centred box of each held-out volume
instead of the whole volume (sampling full-resolution DDPMs on whole volumes is hours per
volume on a CPU); every method then sees the same box.

Example (a smoke run, then a modest one):

    python benchmarks/quality_pet.py --steps 5 --eval-cases 2 --ddpm-cases 0 --out-dir runs/quality_smoke
    nice -n 10 python benchmarks/quality_pet.py --steps 300 --crop 48 --eval-cases 4 --ddpm-cases 1
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MANIFEST = REPO.parent / "data" / "pet-ixi" / "manifest.csv"
ALL_METHODS = ("full3d", "patch", "ppdm2", "ppdm2-nograd", "ppdm4", "ppdm4-nograd")
METRIC_KEYS = ("psnr", "ssim", "mae", "nmse", "seam2", "seam4", "psnr_whole", "ssim_whole")


# ------------------------------------------------------------------------------- pure helpers
def method_config(method: str, *, steps: int, crop: int, patch_crop: int, base: int, batch: int,
                  out_dir: Path, manifest: Path, seed: int = 0, ema_decay: float = 0.99,
                  lr: float | None = None) -> tuple[Path, list[str]]:
    """The YAML file and ``key=value`` overrides that define ``method`` for this benchmark."""
    common = [f"data.manifest={manifest}", f"train.steps={steps}", f"train.out_dir={out_dir / method}",
              "train.val_every=0", f"train.ckpt_every={steps}", "data.val_cases=0", f"train.batch_size={batch}",
              f"train.ema_decay={ema_decay}", "train.device=cpu", f"seed={seed}", "train.keep_checkpoints=1",
              f"train.log_every={max(1, steps // 20)}", f"train.warmup_steps={min(50, steps // 10)}"]
    if lr is not None:
        common.append(f"train.lr={lr}")
    if method == "full3d":
        return REPO / "configs" / "pet_full3d.yaml", common + [
            f"data.crop_size={crop}", f"model.backbone.channels=[{base},{2 * base},{2 * base}]",
            f"model.backbone.num_head_channels={base}"]  # 2 heads in the bottleneck attention, as at base 32
    if method == "patch":
        return REPO / "configs" / "pet_patch.yaml", common + [
            f"data.crop_size={patch_crop}", f"model.backbone.base_channels={base}"]
    if method.startswith("ppdm"):
        r = int(method[4])
        grad = 0.0 if method.endswith("-nograd") else 0.1
        return REPO / "configs" / "pet_ppdm.yaml", common + [
            f"data.crop_size={crop}", f"model.puzzle_factor={r}", f"model.gradient_loss_weight={grad}",
            f"model.backbone.base_channels={base}"]
    raise ValueError(f"unknown method {method!r} (known: {', '.join(ALL_METHODS)})")


def eval_rows(methods: Sequence[str], *, ddim_steps: int, ppdm_steps: int, ddpm_cases: int) -> list[dict[str, Any]]:
    """The evaluated rows: ``{"row", "method", "steps", "eta", "max_cases"}`` (identity first)."""
    rows: list[dict[str, Any]] = [{"row": "identity (low-count input)", "method": None, "steps": 0, "eta": None,
                                   "max_cases": None}]
    for m in methods:
        if m == "full3d":
            if ddpm_cases > 0:
                rows.append({"row": "full3d DDPM-1000", "method": m, "steps": 1000, "eta": 1.0,
                             "max_cases": ddpm_cases})
            rows.append({"row": f"full3d DDIM-{ddim_steps}", "method": m, "steps": ddim_steps, "eta": 0.0,
                         "max_cases": None})
        elif m == "patch":
            rows.append({"row": f"patch DDIM-{ddim_steps}", "method": m, "steps": ddim_steps, "eta": 0.0,
                         "max_cases": None})
        else:
            rows.append({"row": f"{m} ({ppdm_steps} steps)", "method": m, "steps": ppdm_steps, "eta": 0.0,
                         "max_cases": None})
    return rows


def seam_pads(shape: Sequence[int], multiple: int) -> list[int]:
    """Voxels ``predict_volume`` pads before each axis for a network needing ``multiple``."""
    return [((-int(s)) % int(multiple)) // 2 for s in shape]


def aligned_seam(volume: np.ndarray, factor: int, pads_before: Sequence[int]) -> float:
    """``seam_metric`` at period ``factor`` on the puzzle grid of a volume padded by ``pads_before``.

    The puzzle blocks start at padded index 0, i.e. at ``-pad`` in the volume, so the volume is
    cropped by ``(-pad) % factor`` voxels at the start of each axis before measuring.
    """
    from voxdiff.losses import seam_metric

    offs = [(-int(p)) % int(factor) for p in pads_before]
    return float(seam_metric(np.asarray(volume)[offs[0]:, offs[1]:, offs[2]:], factor))


def summarize_rows(per_case: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and std (ddof 0) of each metric per row, in first-seen row order."""
    out = []
    for row in dict.fromkeys(r["row"] for r in per_case):
        cases = [r for r in per_case if r["row"] == row]
        s: dict[str, Any] = {"row": row, "n": len(cases), "cases": [r["case"] for r in cases],
                             "seconds_per_volume": float(np.mean([r.get("seconds", 0.0) for r in cases]))}
        for k in METRIC_KEYS:
            vals = np.array([r[k] for r in cases if r.get(k) is not None and math.isfinite(r[k])], dtype=float)
            s[k] = float(vals.mean()) if vals.size else None
            s[f"{k}_std"] = float(vals.std()) if vals.size else None
        out.append(s)
    return out


def _is_reference(row: str) -> bool:
    return row.startswith(("identity", "target"))


def _cell(mean: float | None, std: float | None, spec: str) -> str:
    if mean is None:
        return "-"
    return f"{mean:{spec}} ± {std:{spec}}" if std is not None else f"{mean:{spec}}"


def markdown_table(summary: list[dict[str, Any]]) -> str:
    """Markdown table of :func:`summarize_rows` output (best PSNR/SSIM/MAE in bold)."""
    header = ("| method | n | PSNR (dB) | SSIM | MAE | seam r=2 | seam r=4 | s / volume |\n"
              "|---|---:|---:|---:|---:|---:|---:|---:|")
    best: dict[str, float] = {}
    learned = [s for s in summary if not _is_reference(s["row"])] or summary
    for k, better in (("psnr", max), ("ssim", max), ("mae", min)):
        vals = [s[k] for s in learned if s[k] is not None]
        if vals:
            best[k] = better(vals)
    lines = [header]
    for s in summary:
        cells = []
        for k, spec in (("psnr", ".2f"), ("ssim", ".4f"), ("mae", ".4g")):
            c = _cell(s[k], s[f"{k}_std"], spec)
            cells.append(f"**{c}**" if k in best and s[k] == best[k] and not _is_reference(s["row"]) else c)
        cells += [_cell(s["seam2"], None, ".3f"), _cell(s["seam4"], None, ".3f")]
        lines.append(f"| {s['row']} | {s['n']} | " + " | ".join(cells) + f" | {s['seconds_per_volume']:.3g} |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------- train / eval
def _mask(case, box) -> np.ndarray | None:
    """The case's brain mask (manifest ``label`` > 0) inside ``box``, or None without labels."""
    from voxdiff.io import load_volume

    if "label" not in case.paths:
        return None
    m = load_volume(case.paths["label"], role="label").array[box] > 0
    return m if m.any() else None


def train_method(method: str, args: argparse.Namespace) -> tuple[Path, dict[str, Any]]:
    """Train ``method`` (or reuse a finished run) and return its checkpoint and a summary."""
    from voxdiff.train.checkpoint import load_checkpoint
    from voxdiff.train.config import load_config
    from voxdiff.train.trainer import Trainer

    yaml_path, overrides = method_config(method, steps=args.steps, crop=args.crop, patch_crop=args.patch_crop,
                                         base=args.base, batch=args.batch, out_dir=args.out_dir,
                                         manifest=args.manifest, seed=args.seed, ema_decay=args.ema_decay,
                                         lr=args.lr)
    ckpt_path = args.out_dir / method / "last.pt"
    if args.reuse and ckpt_path.exists() and int(load_checkpoint(ckpt_path)["step"]) >= args.steps:
        print(f"[{method}] reusing {ckpt_path}", flush=True)
        return ckpt_path, {"reused": True, "overrides": overrides, "config": str(yaml_path)}
    cfg = load_config(yaml_path, overrides)
    trainer = Trainer(cfg, quiet=True)
    print(f"[{method}] training {args.steps} steps ({yaml_path.name}, crop {cfg['data']['crop_size']})", flush=True)
    t0 = time.time()
    summary = trainer.fit()
    wall = time.time() - t0
    print(f"[{method}] trained in {wall:.0f} s ({wall / max(summary['steps'], 1):.2f} s/step)", flush=True)
    return ckpt_path, {"train_wall_s": wall, "sec_per_step": wall / max(summary["steps"], 1),
                       "overrides": overrides, "config": str(yaml_path),
                       "params": sum(p.numel() for p in trainer.task.parameters())}


def centre_box(shape: Sequence[int], size: Sequence[int] | None) -> tuple[tuple[int, ...], tuple[slice, ...]]:
    """Corner and slices of a box of ``size`` centred in ``shape`` (the whole volume when None)."""
    if size is None:
        return (0, 0, 0), tuple(slice(0, int(s)) for s in shape)
    if any(int(c) > int(s) for c, s in zip(size, shape)):
        raise ValueError(f"evaluation crop {tuple(size)} is larger than the volume {tuple(shape)}")
    start = tuple((int(s) - int(c)) // 2 for s, c in zip(shape, size))
    return start, tuple(slice(a, a + int(c)) for a, c in zip(start, size))


def predict_case(task, ckpt: dict, source_vol, steps: int, eta: float | None, seed: int,
                 crop: Sequence[int] | None = None) -> tuple[np.ndarray, float]:
    """The prediction (full-count units) of a held-out volume, or of its centred ``crop``, and its seconds.

    The source is normalised on the whole volume either way; for a crop, coordinate channels
    (patch baseline) give the crop's true place in the volume.
    """
    import torch

    from voxdiff.models import inference_normalizers
    from voxdiff.tasks.conditional import coordinate_channels
    from voxdiff.tasks.inference import predict_volume

    norms = inference_normalizers(ckpt, {"source": source_vol}, "target")
    full = np.asarray(norms["source"].forward(source_vol.array), dtype=np.float32)
    start, box = centre_box(full.shape, crop)
    x = torch.from_numpy(np.ascontiguousarray(full[box]))[None, None]
    inputs = {"source": x}
    if crop is not None and getattr(task, "coords", False):
        if any(int(c) % task.required_multiple for c in crop):
            raise ValueError(f"--eval-crop must be a multiple of {task.required_multiple} for exact coordinates")
        inputs["coords"] = coordinate_channels((1, 1, *x.shape[2:]), torch.tensor([start], dtype=torch.float32),
                                               torch.tensor([full.shape], dtype=torch.float32), "cpu")
    g = torch.Generator().manual_seed(seed)
    t0 = time.time()
    inf = ckpt["config"]["inference"]
    out = predict_volume(task, inputs, steps=steps, eta=eta, generator=g, pad_value=float(full.min()),
                         max_voxels=int(inf["max_voxels"]))
    secs = time.time() - t0
    pred = np.asarray(norms["target"].inverse(out["output"][0, 0].float().numpy()), dtype=np.float32)
    return pred, secs


def score(pred: np.ndarray, target: np.ndarray, multiple: int, mask: np.ndarray | None = None) -> dict[str, float]:
    """Image metrics (docs/metrics.md conventions, inside ``mask``) and aligned seam metrics."""
    from voxdiff.metrics import image_metrics

    m = image_metrics(pred, target, mask=mask)
    whole = image_metrics(pred, target) if mask is not None else m
    pads = seam_pads(pred.shape, multiple)
    return {"psnr": m["psnr"], "ssim": m["ssim"], "mae": m["mae"], "nmse": m["nmse"],
            "data_range": m["data_range"], "psnr_whole": whole["psnr"], "ssim_whole": whole["ssim"],
            "seam2": aligned_seam(pred, 2, pads), "seam4": aligned_seam(pred, 4, pads)}


def main(argv: list[str] | None = None) -> int:
    """Train, evaluate, write ``NAME.json`` and ``NAME.md`` (``--results``) under ``--out-dir``."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--manifest", type=Path, default=DEFAULT_MANIFEST)
    ap.add_argument("--methods", default=",".join(ALL_METHODS))
    ap.add_argument("--steps", type=int, default=300, help="training steps, the same for every method")
    ap.add_argument("--crop", type=int, default=48, help="training crop edge (full3d, PPDM)")
    ap.add_argument("--patch-crop", type=int, default=None, help="patch baseline crop edge [crop / 2, to a multiple of 4]")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--base", type=int, default=32, help="base width of every backbone")
    ap.add_argument("--lr", type=float, default=None, help="learning rate [the configs' 3e-4]")
    ap.add_argument("--ema-decay", type=float, default=0.99)
    ap.add_argument("--eval-cases", type=int, default=4)
    ap.add_argument("--ddpm-cases", type=int, default=1, help="cases sampled with full3d DDPM-1000 (0 skips)")
    ap.add_argument("--ddim-steps", type=int, default=50)
    ap.add_argument("--ppdm-steps", type=int, default=5)
    ap.add_argument("--eval-crop", default=None, help="X,Y,Z: score the centred box of each held-out volume "
                    "instead of the whole volume (for CPU budgets; multiples of 16)")
    ap.add_argument("--no-mask", action="store_true", help="score whole boxes, not the manifest's label > 0 (brain)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out-dir", type=Path, default=REPO / "runs" / "quality_pet")
    ap.add_argument("--reuse", action="store_true", help="reuse finished trainings found in --out-dir")
    ap.add_argument("--results", default="results", help="name of the result files NAME.json / NAME.md")
    args = ap.parse_args(argv)

    import torch

    from voxdiff.bench.methods import use_sdpa_attention
    from voxdiff.data import load_manifest
    from voxdiff.errors import VoxdiffError
    from voxdiff.io import atomic_write_text, load_volume
    from voxdiff.models import load_model
    from voxdiff.train.trainer import environment_summary

    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.manifest.exists():
        print(f"error: {args.manifest}: manifest not found (build it with voxdiff simulate-pet-dataset)", file=sys.stderr)
        return 2
    args.manifest = args.manifest.resolve()
    args.out_dir = args.out_dir.resolve()
    if args.patch_crop is None:
        args.patch_crop = max(4, (args.crop // 2) // 4 * 4)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    for m in methods:
        if m not in ALL_METHODS:
            print(f"error: unknown method '{m}' (known: {', '.join(ALL_METHODS)})", file=sys.stderr)
            return 2
    args.out_dir.mkdir(parents=True, exist_ok=True)
    t_start = time.time()

    ckpts, train_info = {}, {}
    for m in methods:
        ckpts[m], train_info[m] = train_method(m, args)

    eval_crop = None
    if args.eval_crop:
        eval_crop = [int(v) for v in args.eval_crop.split(",")]
        eval_crop = eval_crop * 3 if len(eval_crop) == 1 else eval_crop
    cases = {c.id: c for c in load_manifest(args.manifest)}
    split_val = None
    per_case: list[dict[str, Any]] = []
    rows = eval_rows(methods, ddim_steps=args.ddim_steps, ppdm_steps=args.ppdm_steps, ddpm_cases=args.ddpm_cases)
    loaded: dict[str, tuple[Any, dict]] = {}
    for m in methods:
        loaded[m] = load_model(ckpts[m])
        # Same attention result, without the N x N matrix of MONAI's bottleneck attention on CPU.
        use_sdpa_attention(loaded[m][0])
        val = loaded[m][1]["split"]["val"]
        if split_val is not None and val != split_val:
            raise VoxdiffError(f"{m}: validation split differs from the other methods' ({val[:3]} ...)")
        split_val = val
    if split_val is None:  # identity only: the trainer's split of the default config
        from voxdiff.data import split_cases

        split_val = [c.id for c in split_cases(list(cases.values()), val_fraction=0.1, seed=0)["val"]]
    eval_ids = split_val[: args.eval_cases]
    print(f"evaluating on {len(eval_ids)} held-out case(s): {', '.join(eval_ids)}", flush=True)
    for i, cid in enumerate(eval_ids):
        src = load_volume(cases[cid].path("source"), role="source")
        tgt = load_volume(cases[cid].path("target"), role="target")
        _, box = centre_box(tgt.shape, eval_crop)
        target = tgt.array[box]
        mask = _mask(cases[cid], box) if not args.no_mask else None
        for row in rows:
            if row["max_cases"] is not None and i >= row["max_cases"]:
                continue
            if row["method"] is None:
                pred, secs, mult = src.array[box].astype(np.float32), 0.0, 1
            else:
                task, ckpt = loaded[row["method"]]
                pred, secs = predict_case(task, ckpt, src, row["steps"], row["eta"], args.seed, eval_crop)
                mult = task.required_multiple
            rec = {"row": row["row"], "method": row["method"], "case": cid, "steps": row["steps"],
                   "seconds": secs, **score(pred, target, mult, mask)}
            per_case.append(rec)
            print(f"  {cid} {row['row']}: PSNR {rec['psnr']:.2f} SSIM {rec['ssim']:.4f} MAE {rec['mae']:.4g} "
                  f"({secs:.1f} s)", flush=True)
    # The reference's own seam values tell what "no artefact" looks like on this data.
    for cid in eval_ids:
        tgt = load_volume(cases[cid].path("target"), role="target")
        _, box = centre_box(tgt.shape, eval_crop)
        per_case.append({"row": "target (reference)", "method": None, "case": cid, "steps": 0, "seconds": 0.0,
                         **score(tgt.array[box], tgt.array[box] + 0.0, 1)})
    summary = summarize_rows(per_case)
    table = markdown_table(summary)
    if 0 < args.ddpm_cases < len(eval_ids) and "full3d" in methods:
        sub = eval_ids[: args.ddpm_cases]
        table_sub = markdown_table(summarize_rows([r for r in per_case if r["case"] in sub
                                                   and r["row"] != "target (reference)"]))
    else:
        sub, table_sub = [], ""
    wall = time.time() - t_start
    payload = {"benchmark": "quality_pet", "date": datetime.datetime.now().isoformat(timespec="seconds"),
               "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
               "environment": environment_summary(), "threads": torch.get_num_threads(), "args": {
                   k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
               "eval_cases": eval_ids, "training": train_info, "summary": summary, "per_case": per_case,
               "wall_s": wall}
    atomic_write_text(args.out_dir / f"{args.results}.json", json.dumps(payload, indent=2, default=float) + "\n")
    where = f"the centred {'x'.join(map(str, eval_crop))} box of" if eval_crop else "whole"
    inside = "whole box" if args.no_mask else "inside the brain mask (label > 0)"
    md = [f"# PET denoising quality ({args.steps} training steps per method)", "",
          f"Held-out cases ({where} volumes): {', '.join(eval_ids)}; PSNR/SSIM/MAE in full-count units "
          f"(docs/metrics.md), {inside}; data range = target max - min there.", "", table]
    if table_sub:
        md += ["", f"Same metrics on the DDPM-1000 subset ({', '.join(sub)}):", "", table_sub]
    atomic_write_text(args.out_dir / f"{args.results}.md", "\n".join(md) + "\n")
    print("\n".join(md))
    print(f"\nwrote {args.out_dir / args.results}.json and .md in {wall / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
