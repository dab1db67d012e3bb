"""PD-DDPM segmentation quality against its pre-segmentation and against sampling from noise.

For held-out cases (by default the test split stored in the PD-DDPM checkpoint) this runs

* the pre-segmentation network alone (1 network evaluation),
* PD-DDPM from the pre-segmentation forward-diffused to each ``t'`` with ``K`` reverse steps,
* vanilla DDPM from pure noise with ``--vanilla-steps`` respaced steps,

each with ``--samples`` batched samples, and reports per-class Dice and HD95 (mm), the number
of network evaluations (``K x samples``), wall time, and the AUROC of the uncertainty maps
(entropy of the mean, mutual information) for telling wrong voxels from right ones. The
AUROC is taken inside the union of the reference and predicted foreground (where errors can
happen; the empty background would inflate it) and over the whole volume.

Example::

    python benchmarks/segmentation_quality.py --seg /work/runs/seg_tissue_pdddpm/last.pt \\
        --preseg /work/runs/seg_tissue_preseg/last.pt --manifest ../data/seg-tissue/manifest.csv \\
        --cases 5 --start-steps 100 250 500 --ks 1 2 5 10 20 --samples 3 --out-dir /work/runs/seg_bench

Writes ``OUT_DIR/segmentation_quality.json`` (per case and summary; rewritten after every case)
and ``OUT_DIR/segmentation_quality.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from voxdiff.data import check_label_values, load_manifest
from voxdiff.diffusion.masks import auroc
from voxdiff.io import atomic_write_text, load_volume
from voxdiff.pipelines import load_pipeline

try:
    from voxdiff.metrics import segmentation_metrics
except ImportError:  # metrics written by another module; plain Dice as a fallback
    segmentation_metrics = None


def _metrics(pred: np.ndarray, ref: np.ndarray, classes: list[int], spacing) -> dict[int, dict[str, float]]:
    if segmentation_metrics is not None:
        return segmentation_metrics(pred, ref, labels=classes, spacing=spacing)
    out = {}
    for k in classes:
        a, b = pred == k, ref == k
        denom = int(a.sum() + b.sum())
        out[k] = {"dice": 1.0 if denom == 0 else 2.0 * int((a & b).sum()) / denom, "hd95": math.nan}
    return out


def _uncertainty_auroc(maps: dict[str, torch.Tensor], pred: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    wrong = pred != ref
    fg = (pred > 0) | (ref > 0)
    out = {}
    for name, m in maps.items():
        arr = m[0, 0].float().cpu().numpy()
        out[f"auroc_{name}_fg"] = auroc(arr[fg], wrong[fg])
        out[f"auroc_{name}_all"] = auroc(arr, wrong)
    out["error_rate_fg"] = float(wrong[fg].mean()) if fg.any() else math.nan
    return out


def _row(method: str, pred: np.ndarray, ref: np.ndarray, classes: list[int], spacing, names: dict[int, str],
         extra: dict[str, Any], maps: dict[str, torch.Tensor]) -> dict[str, Any]:
    m = _metrics(pred, ref, classes, spacing)
    row: dict[str, Any] = {"method": method, **extra}
    for k in classes:
        row[f"dice_{names[k]}"] = m[k]["dice"]
        row[f"hd95_{names[k]}"] = m[k]["hd95"]
    row["dice_mean"] = float(np.mean([m[k]["dice"] for k in classes]))
    hd = [m[k]["hd95"] for k in classes if np.isfinite(m[k]["hd95"])]
    row["hd95_mean"] = float(np.mean(hd)) if hd else math.nan
    row.update(_uncertainty_auroc(maps, pred, ref))
    return row


def _held_out(ckpt: dict, manifest: Path, split: str, n: int) -> list:
    cases = load_manifest(manifest, roles=["image", "label"])
    wanted = (ckpt.get("split") or {}).get(split) or []
    chosen = [c for c in cases if c.id in set(wanted)] if wanted else []
    if not chosen:
        print(f"warning: checkpoint has no '{split}' split; taking the last {n} manifest cases", file=sys.stderr)
        chosen = cases[-n:]
    return chosen[:n]


def _summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    methods = list(dict.fromkeys(r["method"] for r in rows))
    out = []
    for method in methods:
        group = [r for r in rows if r["method"] == method]
        agg: dict[str, Any] = {"method": method, "cases": len(group)}
        for key, value in group[0].items():
            if key in ("method", "case"):
                continue
            if all(r.get(key) == value for r in group):  # settings (t', K, N, NFE) stay as they are
                agg[key] = value
            elif isinstance(value, (int, float)):
                vals = np.array([float(r[key]) for r in group if r.get(key) is not None], dtype=np.float64)
                finite = vals[np.isfinite(vals)]
                agg[key] = float(finite.mean()) if finite.size else math.nan
            else:
                agg[key] = value
        out.append(agg)
    return out


def _fmt(v: Any, digits: int = 3) -> str:
    if isinstance(v, float):
        return "nan" if not np.isfinite(v) else f"{v:.{digits}f}"
    return "-" if v is None else str(v)


def _markdown(summary: list[dict[str, Any]], names: list[str], meta: dict[str, Any]) -> str:
    cols = ["method", "t'", "K", "N", "NFE", "sec"] + [f"Dice {n}" for n in names] + ["Dice mean", "HD95 mean (mm)",
                                                                                      "AUROC H (fg)", "AUROC MI (fg)"]
    lines = [f"# PD-DDPM segmentation quality ({meta['cases']} held-out cases)", "",
             f"PD-DDPM checkpoint: `{meta['seg']}` (step {meta['seg_step']}); preseg: `{meta['preseg']}` "
             f"(step {meta['preseg_step']}). Device: {meta['device']}; torch threads: {meta['threads']}.", "",
             "NFE = network evaluations of the diffusion model (K x samples); the preseg network adds 1 to PD-DDPM rows. "
             "AUROC: entropy (H) / mutual information (MI) maps scoring wrong vs right voxels inside the union of "
             "reference and predicted foreground.", "",
             "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in summary:
        cells = [r["method"], _fmt(r.get("start_step")), _fmt(r.get("steps")), _fmt(r.get("samples")),
                 _fmt(r.get("nfe")), _fmt(r.get("seconds"), 1)]
        cells += [_fmt(r.get(f"dice_{n}")) for n in names]
        cells += [_fmt(r.get("dice_mean")), _fmt(r.get("hd95_mean"), 2), _fmt(r.get("auroc_entropy_fg")),
                  _fmt(r.get("auroc_mutual_information_fg"))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _print_table(summary: list[dict[str, Any]], names: list[str]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title="PD-DDPM segmentation quality (mean over cases)")
    for c in ["method", "t'", "K", "N", "NFE", "sec"] + [f"Dice {n}" for n in names] + ["Dice", "HD95", "AUROC H", "AUROC MI"]:
        t.add_column(c, justify="right" if c != "method" else "left")
    for r in summary:
        t.add_row(r["method"], _fmt(r.get("start_step")), _fmt(r.get("steps")), _fmt(r.get("samples")),
                  _fmt(r.get("nfe")), _fmt(r.get("seconds"), 1), *[_fmt(r.get(f"dice_{n}")) for n in names],
                  _fmt(r.get("dice_mean")), _fmt(r.get("hd95_mean"), 2), _fmt(r.get("auroc_entropy_fg")),
                  _fmt(r.get("auroc_mutual_information_fg")))
    Console(width=max(160, Console().width)).print(t)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns a process exit code."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seg", required=True, help="PD-DDPM (task: segmentation) checkpoint")
    ap.add_argument("--preseg", required=True, help="pre-segmentation (task: preseg) checkpoint")
    ap.add_argument("--manifest", required=True, type=Path, help="manifest with image,label columns")
    ap.add_argument("--split", default="test", help="held-out split stored in the checkpoint (test or val)")
    ap.add_argument("--cases", type=int, default=5)
    ap.add_argument("--start-steps", type=int, nargs="+", default=[100, 250, 500])
    ap.add_argument("--ks", type=int, nargs="+", default=[1, 2, 5, 10, 20])
    ap.add_argument("--pairs", nargs="*", default=None,
                    help="explicit t':K pairs (e.g. 250:1 250:5 500:10) instead of the --start-steps x --ks grid")
    ap.add_argument("--samples", type=int, default=3)
    ap.add_argument("--vanilla-steps", type=int, nargs="*", default=[20],
                    help="respaced steps from pure noise (0 or none to skip)")
    ap.add_argument("--eta", type=float, default=None, help="sampler eta (default: the checkpoint's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sampler", default=None, help="sampler of the PD-DDPM/vanilla runs (default: the model's)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out-dir", type=Path, default=Path("benchmarks/results"))
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    pre_pipe = load_pipeline(args.preseg, task="preseg", device=args.device)
    seg_pipe = load_pipeline(args.seg, task="segmentation", device=args.device)
    seg_task, seg_ckpt = seg_pipe.task, seg_pipe.checkpoint
    pre_task, pre_ckpt = pre_pipe.task, pre_pipe.checkpoint
    num_classes = int(seg_task.data_channels)
    if int(pre_task.num_classes) != num_classes:
        print(f"error: preseg has {pre_task.num_classes} classes, PD-DDPM {num_classes}", file=sys.stderr)
        return 2
    classes = list(range(1, num_classes))
    names = {k: f"c{k}" for k in classes}
    classes_json = Path(args.manifest).parent / "classes.json"
    if classes_json.exists():
        info = json.loads(classes_json.read_text())["classes"]
        names.update({int(k): v["name"] for k, v in info.items() if int(k) in names})
    T = seg_task.process.num_train_timesteps
    if args.pairs:
        grid = [tuple(int(v) for v in p.split(":")) for p in args.pairs]
    else:
        grid = [(t0, k) for t0 in args.start_steps for k in args.ks if k <= t0 + 1 and t0 < T]
    cases = _held_out(seg_ckpt, args.manifest, args.split, args.cases)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    meta = {"seg": str(args.seg), "preseg": str(args.preseg), "seg_step": int(seg_ckpt["step"]),
            "preseg_step": int(pre_ckpt["step"]), "device": args.device, "threads": torch.get_num_threads(),
            "samples": args.samples, "grid": grid, "vanilla_steps": args.vanilla_steps, "cases": len(cases),
            "case_ids": [c.id for c in cases], "classes": names, "eta": args.eta, "seed": args.seed}
    rows: list[dict[str, Any]] = []
    for ci, case in enumerate(cases):
        vol = load_volume(case.path("image"), role="image")
        ref = check_label_values(load_volume(case.path("label"), role="label"), str(case.path("label"))).astype(np.int64)
        spacing = vol.spacing
        t0 = time.time()
        pre = pre_pipe(vol)
        pre_labels = pre["labels"].array
        rows.append({"case": case.id, **_row("preseg", pre_labels, ref, classes, spacing, names,
                                             {"start_step": None, "steps": 0, "samples": 1, "nfe": 1,
                                              "seconds": time.time() - t0},
                                             {"entropy": torch.as_tensor(pre["entropy"].array)[None, None]})})
        runs = [("pd", t, k) for t, k in grid] + [("vanilla", None, k) for k in (args.vanilla_steps or []) if k > 0]
        for mode, t_start, k in runs:
            t0 = time.time()
            out = seg_pipe(vol, start=(pre["labels"] if mode == "pd" else None), mode=mode, start_step=t_start,
                           steps=k, samples=args.samples, seed=args.seed, eta=args.eta, sampler=args.sampler)
            info = out.info
            pred = out["labels"].array
            maps = {name: torch.as_tensor(out[name].array)[None, None]
                    for name in ("entropy", "mutual_information") if name in out}
            label = f"pd t'={t_start} K={k}" if mode == "pd" else f"vanilla K={k} (noise)"
            rows.append({"case": case.id, **_row(label, pred, ref, classes, spacing, names,
                                                 {"start_step": t_start, "steps": k, "samples": args.samples,
                                                  "nfe": info["nfe"], "seconds": time.time() - t0}, maps)})
            print(f"[{ci + 1}/{len(cases)}] {case.id} {label}: dice {rows[-1]['dice_mean']:.3f} "
                  f"({rows[-1]['seconds']:.0f} s)", flush=True)
        summary = _summary(rows)
        payload = {"meta": meta, "summary": summary, "per_case": rows}
        atomic_write_text(args.out_dir / "segmentation_quality.json", json.dumps(payload, indent=1, default=str) + "\n")
        atomic_write_text(args.out_dir / "segmentation_quality.md", _markdown(summary, list(names.values()),
                                                                             {**meta, "cases": ci + 1}))
    _print_table(_summary(rows), list(names.values()))
    print(f"wrote {args.out_dir / 'segmentation_quality.json'} and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
