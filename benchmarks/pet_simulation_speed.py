"""Time and score the projection-domain PET simulation on IXI subjects.

Per subject: wall time of ``simulate_projection_pet`` (all doses, NAC, truth), prompts per dose, and
each low dose's PSNR/SSIM (``voxdiff.metrics.image_metrics``) against the truth and against the full
dose, inside the brain (labels > 0), data range = the reference's maximum inside the brain.

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/pet_simulation_speed.py --subjects 3 --out benchmarks/results/pet_simulation_speed.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def main() -> None:
    """Run the benchmark and print a table (and optionally write JSON)."""
    from voxdiff.io import load_volume
    from voxdiff.metrics import image_metrics
    from voxdiff.paths import shared_data_dir
    from voxdiff.sim.physics import ProjectionSettings, dose_tag, simulate_projection_pet

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--subjects", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--post-filter-mm", type=float, default=0.0)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    labels_dir = shared_data_dir() / "ixi-t1-2mm" / "labels"
    files = sorted(labels_dir.glob("*.nii.gz"))[: args.subjects]
    settings = ProjectionSettings(post_filter_mm=args.post_filter_mm)
    rows = []
    for path in files:
        labels = load_volume(path)
        t1 = load_volume(labels_dir.parent / "t1" / path.name)
        start = time.perf_counter()
        res = simulate_projection_pet(labels, case=path.name[:-7], seed=args.seed, settings=settings, t1=t1)
        seconds = time.perf_counter() - start
        brain = labels.array > 0
        truth, full = res.images["truth"].array, res.images["full"].array
        row = {"case": path.name[:-7], "seconds": round(seconds, 2), "lesions": res.params["lesions"],
               "prompts": {k: v["prompts"] for k, v in res.params["counts"].items()}, "doses": {}}
        for name, ref in (("full", None), *((f"low_{dose_tag(d)}", None) for d in settings.doses)):
            img = res.images[name].array
            vs_truth = image_metrics(img, truth, brain, float(truth[brain].max()))
            entry = {"psnr_vs_truth": vs_truth["psnr"], "ssim_vs_truth": vs_truth["ssim"]}
            if name != "full":
                vs_full = image_metrics(img, full, brain, float(full[brain].max()))
                entry.update(psnr_vs_full=vs_full["psnr"], ssim_vs_full=vs_full["ssim"])
            row["doses"][name] = {k: round(float(v), 4) for k, v in entry.items()}
        rows.append(row)
        print(f"{row['case']}: {seconds:.1f} s, {row['lesions']} lesion(s)", flush=True)
        for name, e in row["doses"].items():
            extra = f", vs full {e['psnr_vs_full']:.2f} dB / {e['ssim_vs_full']:.3f}" if "psnr_vs_full" in e else ""
            print(f"  {name:>7}: vs truth {e['psnr_vs_truth']:.2f} dB / SSIM {e['ssim_vs_truth']:.3f}{extra}", flush=True)
    mean = {name: {k: float(np.mean([r["doses"][name][k] for r in rows])) for k in rows[0]["doses"][name]}
            for name in rows[0]["doses"]}
    summary = {"settings": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(settings).items()},
               "region": "brain (labels > 0)", "data_range": "reference maximum inside the brain",
               "seconds_mean": float(np.mean([r["seconds"] for r in rows])), "mean": mean, "subjects": rows}
    print(json.dumps({"seconds_mean": summary["seconds_mean"], "mean": mean}, indent=1))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
