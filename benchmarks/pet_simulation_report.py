"""Benchmark report of the projection-domain PET simulation (issue #12): what a denoiser must beat.

On a folder made by ``voxdiff simulate-pet-dataset --physics projection`` (complete subjects =
those with a ``<case>_pet.json``):

1. **Split.** The split the trainer makes for a PET translation config (``--config``, default
   ``configs/pet_ppdm.yaml``): :func:`voxdiff.data.split_cases` with the config's
   ``data.val_fraction``, ``data.test_fraction`` and ``data.split_seed``, over the case ids of the
   dataset's ``manifest.csv`` (or, while the build runs, of the label files it is built from: the
   same ids). Held-out = ``val`` + ``test``; only its complete subjects are scored. The fitting
   subjects are the first ``--fit-subjects`` complete ``train`` subjects by id.
2. **Gaussian post-filter baseline.** Per dose, the FWHM (mm) maximising the mean PSNR against
   the truth inside the brain over the fitting subjects (grid ``--fwhm-grid``); then scored on
   the held-out subjects. The full dose gets its own FWHM too (the full-dose image is noisy).
3. **Scores** on the held-out subjects, per dose: PSNR / SSIM / NRMSE against the truth and the
   full dose (brain = labels > 0, data range = max - min of the reference inside the brain, the
   default of docs/metrics.md); regional bias against the truth; per-lesion CRC / BV binned by
   4, 8, 16 mm (with the truth's own CRC); invented hot spots in the lesion-free subjects.
4. Simulation time per subject from the ``seconds`` of every complete ``_pet.json``.

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/pet_simulation_report.py --data /work/data/pet-proj \\
        --out benchmarks/results/pet_simulation_report.json --figure docs/figures/pet_race_inputs.png

Writes the JSON (``--out``) and a markdown table beside it (same name, ``.md``).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from datetime import date
from pathlib import Path

import numpy as np

from voxdiff.sim.psf import gaussian_post_filter

DOSES = ("25", "10", "5", "1")
# Activity-referenced CRC divides by (true ratio - 1): lesions whose true ratio to the shell is
# near 1 (a sphere replacing hotter tissue than its shell) would dominate the mean.
MIN_TRUE_RATIO = 1.5
REPO = Path(__file__).resolve().parents[1]


def gaussian(image: np.ndarray, fwhm_mm: float, spacing: np.ndarray) -> np.ndarray:
    """3D Gaussian post-filter of ``fwhm_mm`` (0 = the image itself): the library's, as the demo uses."""
    return gaussian_post_filter(image, fwhm_mm, spacing)


def case_ids(data: Path, labels_dir: Path) -> tuple[list[str], str]:
    """Every case id of the dataset: its manifest's, else the label files' (what the build runs over)."""
    from voxdiff.data import load_manifest

    manifest = data / "manifest.csv"
    complete = {p.name[: -len("_pet.json")] for p in data.glob("*_pet.json")}
    if manifest.exists():
        ids = [c.id for c in load_manifest(manifest, check_exists=False)]
        # A manifest that lacks complete subjects is left from an earlier, smaller build.
        if complete <= set(ids):
            return ids, str(manifest)
    ids = sorted(p.name[: -len(".nii.gz")] for p in labels_dir.glob("*.nii.gz"))
    return ids, f"label files of {labels_dir} (no up-to-date manifest.csv yet)"


def make_split(ids: list[str], config: Path) -> tuple[dict[str, list[str]], dict[str, float]]:
    """The trainer's split (``voxdiff.train.Trainer._setup_data``) of ``ids`` under ``config``."""
    from voxdiff.data import Case, split_cases
    from voxdiff.train.config import load_config

    dc = load_config(config)["data"]
    opts = {"val_fraction": float(dc["val_fraction"]), "test_fraction": float(dc["test_fraction"]),
            "seed": int(dc["split_seed"])}
    split = split_cases([Case(i, {}) for i in ids], **opts)
    return {k: [c.id for c in v] for k, v in split.items()}, opts


class Subject:
    """One complete subject's volumes, each read once (float64 arrays)."""

    def __init__(self, data: Path, labels_dir: Path, case: str, roles: tuple[str, ...]):
        from voxdiff.io import load_volume
        from voxdiff.metrics import pet_region_map, read_lesion_json

        self.case = case
        labels = load_volume(labels_dir / f"{case}.nii.gz")
        self.affine = np.asarray(labels.affine)
        self.spacing = np.sqrt((self.affine[:3, :3] ** 2).sum(0))
        self.labels = np.asarray(labels.array)
        self.brain = self.labels > 0
        self.images = {r: np.asarray(load_volume(data / f"{case}_{r}.nii.gz").array, dtype=np.float64) for r in roles}
        self.regions = None
        self.lesion_map = None
        self.table = None
        if "lesions" in roles:
            self.regions = pet_region_map(self.labels)
            self.lesion_map = self.images.pop("lesions").astype(np.int32)
            self.table = read_lesion_json(data / f"{case}_lesions.json")


def fit_sigmas(data: Path, labels_dir: Path, cases: list[str], grid: list[float]) -> dict:
    """Per dose (and full), PSNR vs truth in the brain for each FWHM of ``grid``; the best FWHM."""
    from voxdiff.metrics.image import default_data_range, psnr

    kinds = ("full", *(f"low_{d}" for d in DOSES))
    table = {k: np.zeros((len(cases), len(grid))) for k in kinds}
    for n, case in enumerate(cases):
        s = Subject(data, labels_dir, case, ("truth", *kinds))
        truth = s.images["truth"]
        rng = default_data_range(truth, s.brain)
        for k in kinds:
            for j, fwhm in enumerate(grid):
                table[k][n, j] = psnr(gaussian(s.images[k], fwhm, s.spacing), truth, rng, s.brain)
        print(f"fit {n + 1}/{len(cases)} {case}: best FWHM " +
              ", ".join(f"{k} {grid[int(np.argmax(table[k][n]))]:g}" for k in kinds), flush=True)
    out = {}
    for k in kinds:
        mean = table[k].mean(0)
        best = int(np.argmax(mean))
        out[k] = {"fwhm_mm": grid[best], "mean_psnr_at_best": float(mean[best]),
                  "mean_psnr_unfiltered": float(mean[0]) if grid[0] == 0 else None,
                  "curve": {f"{g:g}": round(float(v), 4) for g, v in zip(grid, mean)}}
    return out


def score_subject(s: Subject, fwhm: dict[str, float]) -> dict:
    """Every metric of one held-out subject for full, low_d and their Gaussian-filtered versions."""
    full = s.images["full"]
    preds = {"full": full}
    preds["gauss_full"] = gaussian(full, fwhm["full"], s.spacing)
    for d in DOSES:
        preds[f"low_{d}"] = s.images[f"low_{d}"]
        preds[f"gauss_{d}"] = gaussian(s.images[f"low_{d}"], fwhm[f"low_{d}"], s.spacing)
    return score_images(s, preds)


def score_images(s: Subject, preds: dict[str, np.ndarray]) -> dict:
    """Every metric of one subject for each named image (also the race's scorer: one copy)."""
    from voxdiff.losses import worst_seam_metric
    from voxdiff.metrics import hotspots, image_metrics, lesion_crc, regional_bias

    truth, full = s.images["truth"], s.images["full"]
    lesions = s.table["lesions"]
    # The table's contrast is relative to the mean activity the sphere replaced (often a tissue
    # mix), not to the metric's background shell; the activity-referenced CRC divides by the
    # true ratio of the same ROI and shell in the noise-free, unblurred activity map instead.
    true_ratio = [r["roi_mean"] / r["background_mean"] for r in
                  lesion_crc(s.images["activity"], lesions, s.spacing, lesion_map=s.lesion_map, regions=s.regions)]
    eff = [{**les, "contrast": ratio} for les, ratio in zip(lesions, true_ratio)]
    row = {"case": s.case, "lesion_free": s.table["lesion_free"], "n_lesions": len(lesions),
           "min": {}, "images": {}, "lesions": {}, "hotspots": {}}
    for name, img in preds.items():
        m = {f"{k}_truth": v for k, v in image_metrics(img, truth, s.brain).items() if k in ("psnr", "ssim", "nrmse")}
        if name != "full":
            m.update({f"{k}_full": v for k, v in image_metrics(img, full, s.brain).items() if k in ("psnr", "ssim", "nrmse")})
        m.update(regional_bias(img, truth, s.regions, s.lesion_map))
        # Puzzle-grid artefacts (period 2 and 4, at the alignment that shows them most; ~1 = none).
        m.update({f"seam{r}": worst_seam_metric(img, r)[0] for r in (2, 4)})
        row["images"][name] = m
        row["min"][name] = float(img.min())
        if lesions:
            per = lesion_crc(img, lesions, s.spacing, truth=truth, lesion_map=s.lesion_map, regions=s.regions)
            act = lesion_crc(img, eff, s.spacing, truth=truth, lesion_map=s.lesion_map, regions=s.regions)
            for p, a, ratio in zip(per, act, true_ratio):
                p.update(true_ratio=ratio, crc_act=a["crc"], crc_truth_act=a["crc_truth"])
            row["lesions"][name] = per
        if s.table["lesion_free"]:
            hs = hotspots(img, truth, s.spacing, regions=s.regions, mask=s.brain, lesion_map=s.lesion_map)
            row["hotspots"][name] = {"count": hs["hotspots"], "peak": hs["hotspot_peak"],
                                     "largest": max((sp["n_voxels"] for sp in hs["spots"]), default=0)}
    return row


def _ms(values) -> dict:
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=np.float64)
    if not v.size:
        return {"mean": math.nan, "sd": math.nan, "n": 0}
    return {"mean": float(v.mean()), "sd": float(v.std()), "n": int(v.size)}


def summarise(rows: list[dict], names: list[str]) -> dict:
    """Mean / sd over subjects (image metrics, bias), over lesions per size bin (CRC), over lesion-free subjects (hot spots)."""
    from voxdiff.metrics.pet import DEFAULT_SIZE_BINS_MM, size_bin

    out: dict = {"images": {}, "crc": {}, "hotspots": {}}
    for name in names:
        keys = rows[0]["images"][name].keys()
        out["images"][name] = {k: _ms([r["images"][name][k] for r in rows]) for k in keys}
        per = [les for r in rows for les in r["lesions"].get(name, [])]
        bins = {}
        for b in DEFAULT_SIZE_BINS_MM:
            sel = [les for les in per if size_bin(les["diameter_mm"]) == b]
            hot = [x for x in sel if x["true_ratio"] >= MIN_TRUE_RATIO]
            bins[f"{b:g}mm"] = {**{k: _ms([x[k] for x in sel]) for k in ("crc", "crc_truth", "bv", "bv_truth")},
                                **{k: _ms([x[k] for x in hot]) for k in ("crc_act", "crc_truth_act")},
                                "n_weak_true_ratio": len(sel) - len(hot)}
        out["crc"][name] = bins
        free = [r["hotspots"][name] for r in rows if name in r["hotspots"]]
        out["hotspots"][name] = {"subjects": len(free), "count": _ms([h["count"] for h in free]),
                                 "peak": _ms([h["peak"] for h in free]),
                                 "max_count": max((h["count"] for h in free), default=None),
                                 "largest_cluster_voxels": max((h["largest"] for h in free), default=None)}
    return out


def sim_seconds(data: Path) -> dict:
    """Mean / min / max of the ``seconds`` of every complete subject's ``_pet.json``."""
    sec = []
    for p in sorted(data.glob("*_pet.json")):
        value = json.loads(p.read_text()).get("seconds")
        if value is not None:
            sec.append(float(value))
    return {"n": len(sec), "mean": float(np.mean(sec)), "min": float(np.min(sec)), "max": float(np.max(sec)),
            "median": float(np.median(sec))} if sec else {"n": 0}


def montage(s: Subject, fwhm5: float, path: Path) -> None:
    """Truth / full / 25 / 5 / 1 % / 5 % Gaussian, axial and coronal planes through the first lesion (or the centre)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from voxdiff.sim.physics import axial_axis

    imgs = [("truth", s.images["truth"]), ("full (100 %)", s.images["full"]), ("25 %", s.images["low_25"]),
            ("5 %", s.images["low_5"]), ("1 %", s.images["low_1"]),
            (f"5 % + Gaussian {fwhm5:g} mm", gaussian(s.images["low_5"], fwhm5, s.spacing))]
    ax = axial_axis(s.affine)
    lesions = s.table["lesions"]
    centre = (np.round(lesions[0]["centre_voxel"]).astype(int) if lesions
              else np.array(np.nonzero(s.brain)).mean(1).astype(int))
    vmax = float(np.percentile(s.images["truth"][s.brain & (s.lesion_map == 0)], 99.5)) * 1.2
    fig, axes = plt.subplots(2, len(imgs), figsize=(2.6 * len(imgs), 5.6))
    # Array axes here are (P, S, R) for IXI at 2 mm: axial = fixed axis 1, coronal = fixed axis 0.
    for j, (title, img) in enumerate(imgs):
        axial = np.take(img, centre[ax], axis=ax)
        coronal = np.take(img, centre[0], axis=0)[::-1, :]
        for i, plane in enumerate((axial, coronal)):
            a = axes[i, j]
            a.imshow(plane, cmap="inferno", vmin=0, vmax=vmax, interpolation="nearest")
            a.set_xticks([])
            a.set_yticks([])
            if i == 0:
                a.set_title(title, fontsize=9)
        axes[0, 0].set_ylabel("axial", fontsize=9)
        axes[1, 0].set_ylabel("coronal", fontsize=9)
    fig.suptitle(f"{s.case} (held-out), planes through {'lesion 1' if lesions else 'the brain centre'} "
                 f"(voxel {centre.tolist()}); 0 to {vmax:.1f}", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _f(x: dict, digits: int = 2) -> str:
    return "–" if not x["n"] else f"{x['mean']:.{digits}f} ± {x['sd']:.{digits}f}"


def markdown(report: dict) -> str:
    """The tables of the report."""
    s, fit = report["summary"], report["fit"]
    label = {"full": "full (100 %)", "gauss_full": f"full + Gauss {fit['full']['fwhm_mm']:g} mm"}
    for d in DOSES:
        label[f"low_{d}"] = f"{d} %"
        label[f"gauss_{d}"] = f"{d} % + Gauss {fit[f'low_{d}']['fwhm_mm']:g} mm"
    names = report["names"]
    lines = [f"Held-out subjects: {report['n_test']} ({report['n_test_lesion_free']} lesion-free, "
             f"{report['n_test_lesions']} lesions); fitting subjects: {report['n_fit']}. Mean ± sd over subjects.", "",
             "| image | PSNR vs truth | SSIM vs truth | NRMSE vs truth | PSNR vs full | SSIM vs full | NRMSE vs full |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for n in names:
        m = s["images"][n]
        vs_full = ([_f(m["psnr_full"]), _f(m["ssim_full"], 3), _f(m["nrmse_full"], 3)] if "psnr_full" in m
                   else ["–", "–", "–"])
        lines.append(f"| {label[n]} | {_f(m['psnr_truth'])} | {_f(m['ssim_truth'], 3)} | {_f(m['nrmse_truth'], 3)} | "
                     + " | ".join(vs_full) + " |")
    lines += ["", "Gaussian FWHM fitted on the training subjects (max mean PSNR vs truth in the brain):", "",
              "| image | FWHM (mm) | fit PSNR unfiltered | fit PSNR filtered |", "|---|---:|---:|---:|"]
    for k, v in fit.items():
        lines.append(f"| {'full (100 %)' if k == 'full' else k.replace('low_', '') + ' %'} | {v['fwhm_mm']:g} | {v['mean_psnr_unfiltered']:.2f} | {v['mean_psnr_at_best']:.2f} |")
    lines += ["", "Regional mean bias vs truth (%, lesion voxels excluded):", "",
              "| image | GM | WM | deep GM | cerebellum |", "|---|---:|---:|---:|---:|"]
    for n in names:
        m = s["images"][n]
        lines.append(f"| {label[n]} | " + " | ".join(_f(m[f"bias_{r}"]) for r in ("gm", "wm", "deep_gm", "cerebellum")) + " |")
    bins = list(s["crc"][names[0]].keys())
    t = s["crc"][names[0]]
    lines += ["", "Lesion CRC per size bin, mean ± sd over lesions (n per bin: "
              + ", ".join(f"{b} {t[b]['crc_truth']['n']}" for b in bins) + "). *act*: divided by the true "
              "ROI/background ratio of the activity map (same ROI and shell; lesions with a true ratio below "
              f"{MIN_TRUE_RATIO:g} left out: " + ", ".join(f"{b} {t[b]['n_weak_true_ratio']}" for b in bins)
              + "); *table*: divided by the "
              "lesion table's contrast (`lesion_crc` as is). Truth = the CRC achievable at the reconstruction's "
              "resolution. BV: voxel-wise std/mean of the background shell.", "",
              "| image | " + " | ".join(f"CRC act {b}" for b in bins) + " | " + " | ".join(f"CRC table {b}" for b in bins)
              + " | " + " | ".join(f"BV {b}" for b in bins) + " |",
              "|---|" + "---:|" * (3 * len(bins))]
    lines.append("| truth | " + " | ".join(_f(t[b]["crc_truth_act"]) for b in bins) + " | "
                 + " | ".join(_f(t[b]["crc_truth"]) for b in bins) + " | "
                 + " | ".join(_f(t[b]["bv_truth"], 3) for b in bins) + " |")
    for n in names:
        c = s["crc"][n]
        lines.append(f"| {label[n]} | " + " | ".join(_f(c[b]["crc_act"]) for b in bins) + " | "
                     + " | ".join(_f(c[b]["crc"]) for b in bins) + " | "
                     + " | ".join(_f(c[b]["bv"], 3) for b in bins) + " |")
    lines += ["", "Invented hot spots (contrast >= 1.5 vs local same-tissue background, absent from the truth) "
              "in the lesion-free held-out subjects:", "",
              "| image | subjects | hot spots per subject | max per subject | peak contrast | largest cluster (voxels) |",
              "|---|---:|---:|---:|---:|---:|"]
    for n in names:
        h = s["hotspots"][n]
        lines.append(f"| {label[n]} | {h['subjects']} | {_f(h['count'], 1)} | {h['max_count']} | {_f(h['peak'])} | "
                     f"{h['largest_cluster_voxels']} |")
    t = report["simulation_seconds"]
    lines += ["", f"Simulation time per subject ({t['n']} subjects, `seconds` of `_pet.json`): mean {t['mean']:.1f} s, "
              f"median {t['median']:.1f} s, range {t['min']:.1f}-{t['max']:.1f} s.",
              f"Minimum voxel value over all scored images: {report['min_value']:.3g}."]
    return "\n".join(lines) + "\n"


def main() -> None:
    """Fit the Gaussian baseline, score the held-out subjects, write JSON + markdown (+ the montage)."""
    import torch

    from voxdiff.io.atomic import atomic_write_text

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("/work/data/pet-proj"))
    ap.add_argument("--labels-dir", type=Path, default=None, help="default: the shared IXI labels")
    ap.add_argument("--config", type=Path, default=REPO / "configs" / "pet_ppdm.yaml")
    ap.add_argument("--fit-subjects", type=int, default=24)
    ap.add_argument("--max-test", type=int, default=0, help="score at most this many held-out subjects (0 = all)")
    ap.add_argument("--fwhm-grid", default="0,1,2,3,4,4.5,5,5.5,6,6.5,7,7.5,8,9,10,12")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "pet_simulation_report.json")
    ap.add_argument("--figure", type=Path, default=None)
    ap.add_argument("--figure-case", default=None, help="held-out case of the montage (default: first with lesions)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    start = time.perf_counter()
    if args.labels_dir is None:
        from voxdiff.paths import shared_data_dir

        args.labels_dir = shared_data_dir() / "ixi-t1-2mm" / "labels"
    ids, id_source = case_ids(args.data, args.labels_dir)
    split, split_opts = make_split(ids, args.config)
    complete = {p.name[: -len("_pet.json")] for p in args.data.glob("*_pet.json")}
    held_out = sorted(split["val"] + split["test"])
    test = [c for c in held_out if c in complete]
    if args.max_test:
        test = test[: args.max_test]
    fit_cases = [c for c in split["train"] if c in complete][: args.fit_subjects]
    print(f"{len(ids)} ids ({id_source}), {len(complete)} complete; held-out {len(held_out)} "
          f"({len(test)} complete, scored), fitting {len(fit_cases)}", flush=True)
    if not test or not fit_cases:
        raise SystemExit("no complete held-out or training subject yet")
    grid = sorted({float(v) for v in args.fwhm_grid.split(",")})
    fit = fit_sigmas(args.data, args.labels_dir, fit_cases, grid)
    fwhm = {k: v["fwhm_mm"] for k, v in fit.items()}
    t_fit = time.perf_counter() - start
    roles = ("truth", "full", *(f"low_{d}" for d in DOSES), "activity", "lesions")
    rows, fig_subject = [], None
    for n, case in enumerate(test):
        s = Subject(args.data, args.labels_dir, case, roles)
        rows.append(score_subject(s, fwhm))
        r = rows[-1]["images"]
        print(f"test {n + 1}/{len(test)} {case} ({rows[-1]['n_lesions']} lesions): PSNR vs truth "
              + ", ".join(f"{k} {r[k]['psnr_truth']:.2f}" for k in ("full", "low_5", "gauss_5", "low_1", "gauss_1")), flush=True)
        want = args.figure_case == case or (args.figure_case is None and fig_subject is None and s.table["lesions"])
        if args.figure is not None and want:
            fig_subject = s
    names = ["full", "gauss_full", *[x for d in DOSES for x in (f"low_{d}", f"gauss_{d}")]]
    report = {
        "benchmark": "pet_simulation_report", "date": date.today().isoformat(),
        "machine": f"{platform.machine()}, 2 shared CPU cores, no GPU, 1 thread", "data": str(args.data),
        "ids_from": id_source, "n_ids": len(ids), "n_complete": len(complete), "config": str(args.config),
        "split": split_opts, "held_out": held_out, "test": test, "fit_cases": fit_cases,
        "n_test": len(test), "n_fit": len(fit_cases),
        "n_test_lesion_free": sum(r["lesion_free"] for r in rows), "n_test_lesions": sum(r["n_lesions"] for r in rows),
        "data_range": "max - min of the reference inside the brain (labels > 0), per subject",
        "fwhm_grid_mm": grid, "fit": fit, "names": names,
        "summary": summarise(rows, names), "simulation_seconds": sim_seconds(args.data),
        "min_value": min(min(r["min"].values()) for r in rows),
        "seconds": {"fit": round(t_fit, 1), "total": round(time.perf_counter() - start, 1)}, "subjects": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(report, indent=1, default=float, allow_nan=True))
    md = markdown(report)
    atomic_write_text(args.out.with_suffix(".md"), md)
    print(md)
    if args.figure is not None and fig_subject is not None:
        montage(fig_subject, fwhm["low_5"], args.figure)
        print(f"figure {args.figure} ({fig_subject.case})")
    print(f"done in {report['seconds']['total']:.0f} s")


if __name__ == "__main__":
    main()
