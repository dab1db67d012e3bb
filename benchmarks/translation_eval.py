"""Evaluate a trained translation model on whole held-out volumes, against the identity baseline.

For every validation case of the checkpoint's own split (or ``--cases``), run ``voxdiff
translate``'s code path on the source file, then score output and source against the target in
the target's units (voxdiff.metrics convention: per volume, data range = target max - min inside
the mask). The mask is the manifest's ``label`` role > 0 when present (brain), else target != 0. The
identity baseline is the source mapped into the target's units by the model's normalisers.
Also reports the seam metric of the output at the model's puzzle factor and the time per volume.

Example:
    python benchmarks/translation_eval.py --model runs/pet_ppdm/last.pt \
        --manifest data/pet-ixi/manifest.csv --steps 5 --out runs/pet_ppdm/eval
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> dict:
    """Run the evaluation; returns the summary dict (also written as JSON + markdown)."""
    from voxdiff.pipelines import load_pipeline
    from voxdiff.data import load_manifest
    from voxdiff.io import load_volume
    from voxdiff.losses import seam_metric
    from voxdiff.metrics import image_metrics
    from voxdiff.models import inference_normalizers

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--manifest", required=True)
    ap.add_argument("--source-col", default="source")
    ap.add_argument("--target-col", default="target")
    ap.add_argument("--mask-col", default="label")
    ap.add_argument("--cases", default=None, help="comma-separated case ids (default: the checkpoint's val split)")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--out", required=True, help="output folder (predictions, JSON, markdown)")
    args = ap.parse_args(argv)

    pipe = load_pipeline(args.model)
    ckpt = pipe.checkpoint
    ids = args.cases.split(",") if args.cases else list(ckpt["split"]["val"])
    if args.limit:
        ids = ids[: args.limit]
    cases = {c.id: c for c in load_manifest(args.manifest)}
    factor = ckpt["config"]["model"].get("puzzle_factor", 1)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for cid in ids:
        case = cases[cid]
        src_path, tgt_path = case.paths[args.source_col], case.paths[args.target_col]
        pred_path = out_dir / f"{cid}_pred.nii.gz"
        t0 = time.time()
        pipe(src_path, steps=args.steps).save({"output": pred_path})
        seconds = time.time() - t0
        src, tgt, pred = load_volume(src_path), load_volume(tgt_path), load_volume(pred_path)
        mask = (load_volume(case.paths[args.mask_col]).array > 0) if args.mask_col in case.paths else tgt.array != 0
        row = {"case": cid, "seconds": seconds}
        # Identity baseline in the target's units: the source mapped through the model's own
        # normalisers (what a residual of zero would give); equals the source when they share units.
        norms = inference_normalizers(ckpt, {"source": src}, "target")
        identity = np.asarray(norms["target"].inverse(norms["source"].forward(src.array)), dtype=np.float32)
        for name, vol in (("input", identity), ("ppdm", pred.array)):
            m = image_metrics(vol, tgt.array, mask=mask)
            row.update({f"{name}_{k}": float(m[k]) for k in ("psnr", "ssim", "mae", "nmse")})
        row["ppdm_seam"] = float(seam_metric(pred.array, factor)) if factor != 1 else float("nan")
        row["target_seam"] = float(seam_metric(tgt.array, factor)) if factor != 1 else float("nan")
        rows.append(row)
        print(f"{cid}: input PSNR {row['input_psnr']:.2f} dB -> output {row['ppdm_psnr']:.2f} dB "
              f"(SSIM {row['input_ssim']:.3f} -> {row['ppdm_ssim']:.3f}, {seconds:.1f} s)", flush=True)
    keys = [k for k in rows[0] if k != "case"]
    summary = {"model": str(args.model), "steps": args.steps or ckpt["config"]["inference"]["steps"],
               "cases": ids, "train_steps": int(ckpt["step"]),
               "mean": {k: float(np.mean([r[k] for r in rows])) for k in keys},
               "std": {k: float(np.std([r[k] for r in rows])) for k in keys}, "rows": rows}
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    mean, std = summary["mean"], summary["std"]
    md = ["| method | PSNR (dB) | SSIM | MAE | NMSE |", "|---|---|---|---|---|"]
    for name, label in (("input", "identity (source in target units)"), ("ppdm", f"PPDM ({summary['steps']} steps)")):
        md.append(f"| {label} | {mean[name + '_psnr']:.2f} ± {std[name + '_psnr']:.2f} | "
                  f"{mean[name + '_ssim']:.4f} ± {std[name + '_ssim']:.4f} | {mean[name + '_mae']:.3f} | "
                  f"{mean[name + '_nmse']:.4f} |")
    (out_dir / "summary.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    print(f"seam metric (r={factor}): output {mean['ppdm_seam']:.3f}, target {mean['target_seam']:.3f}; "
          f"{mean['seconds']:.1f} s per volume over {len(rows)} cases")
    return summary


if __name__ == "__main__":
    main()
