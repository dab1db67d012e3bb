"""PET denoising race (issue #17): every denoiser a PET user would try, scored on whole held-out volumes.

On a folder made by ``voxdiff simulate-pet-dataset --physics projection`` (``manifest.csv`` with the
roles ``truth``, ``full``, ``low_<dose>``, ``activity``, ``lesions``; complete subjects = those with
a ``<case>_pet.json``):

1. **Split.** :func:`voxdiff.data.split_cases` of the manifest's case ids under ``--config`` (its
   ``data.val_fraction``, ``data.test_fraction``, ``data.split_seed``; default
   ``configs/pet_proj_ppdm_r2.yaml``: 16 test subjects of 160). Only the ``test`` subjects are
   scored, and every trained checkpoint must carry the same test list (checked). With
   ``test_fraction`` 0.1 the test list is the same 16 subjects that
   ``benchmarks/pet_simulation_report.py`` scores under ``configs/pet_ppdm.yaml`` (split_cases puts
   the test cases first, so they equal that config's validation cases).
2. **Fitting** (training split only, first ``--fit-subjects`` complete ``train`` cases by id):
   - ``gaussian``: per dose, the FWHM of the grid maximising the mean PSNR against the truth in the
     brain (the rule and helpers of ``benchmarks/pet_simulation_report.py``);
   - ``bm4d``: BM4D in its coloured-noise mode. OSEM noise is neither Poisson nor white in image
     space, so no Anscombe transform: ``sigma_psd`` is the noise power spectrum of the training
     subjects, ``|FFT((low - truth) * brain)|^2 * N / n_brain`` (the spectrum of the noise inside
     the brain, in BM4D's convention ``N sigma^2`` for white noise), each subject's divided by its
     low-dose image's squared volume mean and averaged; on a test subject it is multiplied back by
     that subject's squared low-dose volume mean (no label or truth of a test subject is used).
     ``--bm4d-noise white`` uses the white PSD of the same relative noise std instead; ``--bm4d-scale``
     multiplies the noise power (choose it on training subjects; BENCHMARKS.md section 10 used 2).
3. **Methods** (``--methods``): ``identity`` (the low-dose input), ``full`` (the full-dose image,
   a reference row: what a user has), ``gaussian``, ``bm4d`` and any number of checkpoints
   ``NAME=PATH[:key=value,...]`` (keys: ``steps``, ``samples``, ``sampler``, ``eta``, ``seed``,
   ``sw_roi`` (an edge, or ``crop`` = the training crop size), ``dose``; default dose: the dose of
   the checkpoint's ``data.roles.source``; a model with a ``dose`` condition is given that dose, in
   percent, unless ``blind=1``). Checkpoints are served through
   :func:`voxdiff.pipelines.load_pipeline` exactly as ``voxdiff translate`` serves them (whole
   volume unless ``sw_roi``); the row says which.
4. **Scores** per dose (``--doses``), mean ± sd over the test subjects: PSNR / SSIM / NRMSE vs truth
   and vs full dose, regional bias, lesion CRC (activity-referenced, as in the report) and BV per
   4/8/16 mm bin, invented hot spots in the lesion-free subjects, seconds per volume; trained rows
   add their steps, training time, s/step (``train_log.csv`` of the run folder) and training-step
   memory (``--memory-json`` from ``voxdiff bench memory --config ... --json``).

    OMP_NUM_THREADS=1 nice -n 15 python benchmarks/pet_race.py --data /work/data/pet-proj --doses 5 \\
        --methods identity,full,gaussian,bm4d --bm4d-subjects 4 --bm4d-scale 2 --gaussian-curve 2,4,6,8,10 \\
        --model 'unet=/work/runs/pet_proj_regression/last.pt' \\
        --model 'ppdm2=/work/runs/pet_proj_ppdm_r2/last.pt' --model 'ppdm2x4=/work/runs/pet_proj_ppdm_r2/last.pt:samples=4' \\
        --out benchmarks/results/pet_race_5.json --figure benchmarks/figures/pet_race_crc_bv.png

Writes the JSON (``--out``), a markdown table beside it (same name, ``.md``) and the CRC-vs-BV plot.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import platform
import shlex
import sys
import time
from datetime import datetime
from pathlib import Path

import numpy as np

# The split, the Subject loader, the Gaussian filter and the summaries of the simulation report:
# one rule for both benchmarks.
sys.path.insert(0, str(Path(__file__).resolve().parent))
import pet_simulation_report as psr

REPO = Path(__file__).resolve().parents[1]
BUILTIN = ("identity", "full", "gaussian", "bm4d")
MODEL_KEYS = {"steps": int, "samples": int, "sampler": str, "eta": float, "seed": int, "sw_roi": str, "dose": str,
              "blind": int}
REGIONS = ("gm", "wm", "deep_gm", "cerebellum")


# --- inputs -----------------------------------------------------------------------------------------

def parse_model(spec: str) -> dict:
    """``NAME=PATH[:key=value,...]`` -> ``{"name", "path", "options"}`` (PATH may hold ``:``, e.g. ``pretrained:x``)."""
    if "=" not in spec.split(":")[0]:
        raise SystemExit(f"--model {spec!r}: expected NAME=PATH[:key=value,...]")
    name, rest = spec.split("=", 1)
    path, options = rest, {}
    head, sep, tail = rest.rpartition(":")
    if sep and "=" in tail:
        path = head
        for item in tail.split(","):
            key, eq, value = item.partition("=")
            if not eq or key not in MODEL_KEYS:
                raise SystemExit(f"--model {spec!r}: unknown option {item!r} (keys: {', '.join(MODEL_KEYS)})")
            options[key] = MODEL_KEYS[key](value)
    if not name or name in BUILTIN or not path:
        raise SystemExit(f"--model {spec!r}: give a new NAME (not {', '.join(BUILTIN)}) and a PATH")
    return {"name": name, "path": path, "options": options}


def race_split(data: Path, labels_dir: Path, config: Path) -> dict:
    """The trainer's split of the dataset's case ids under ``config``: ``{"split", "opts", "ids_from"}``."""
    ids, source = psr.case_ids(data, labels_dir)
    split, opts = psr.make_split(ids, config)
    if not split["test"]:
        raise SystemExit(f"{config}: data.test_fraction is 0, so there are no test subjects to score")
    return {"split": split, "opts": opts, "ids_from": source, "n_ids": len(ids)}


def downsample_subject(s: psr.Subject, factor: int) -> psr.Subject:
    """Block-average every image of ``s`` by ``factor`` (labels and lesion map: each block's first voxel).

    The same rule as the trainer's ``data.downsample`` (:func:`voxdiff.ops.resample.downsample_volume`),
    so that a model trained at 4 mm is scored at 4 mm; lesion centres move to the new grid.
    """
    from voxdiff.io import Volume
    from voxdiff.metrics import pet_region_map
    from voxdiff.ops.resample import downsample_volume

    if factor == 1:
        return s
    lab = downsample_volume(Volume(array=s.labels.astype(np.float32), affine=s.affine), factor, label=True)
    s.affine = np.asarray(lab.affine)
    s.spacing = s.spacing * factor
    s.labels = np.rint(lab.array).astype(np.int32)
    s.brain = s.labels > 0
    s.images = {k: downsample_volume(Volume(array=v.astype(np.float32), affine=np.eye(4)), factor).array.astype(np.float64)
                for k, v in s.images.items()}
    if s.lesion_map is not None:
        lm = downsample_volume(Volume(array=s.lesion_map.astype(np.float32), affine=np.eye(4)), factor, label=True)
        s.lesion_map = np.rint(lm.array).astype(np.int32)
        s.regions = pet_region_map(s.labels)
        # New voxel i is the centre of old voxels f*i .. f*i + f - 1.
        s.table = {**s.table, "lesions": [{**les, "centre_voxel": [(c - (factor - 1) / 2) / factor for c in les["centre_voxel"]]}
                                          for les in s.table["lesions"]]}
    return s


def load_subject(data: Path, labels_dir: Path, case: str, roles: tuple[str, ...], factor: int) -> psr.Subject:
    """One subject's volumes (float64), block-averaged by ``factor``."""
    return downsample_subject(psr.Subject(data, labels_dir, case, roles), factor)


# --- fitting on the training split ------------------------------------------------------------------

def fit_baselines(subjects: list, doses: list[str], grid: list[float], bm4d_mode: str | None,
                  prefix: str = "low") -> dict:
    """Per dose: the Gaussian FWHM (max mean PSNR vs truth in the brain over ``subjects``) and BM4D's noise model.

    ``pet_simulation_report.fit_sigmas`` reloads every subject at full resolution for all five
    images; the race fits only its doses, at its resolution, sharing the loaded subjects with the
    BM4D noise fit.
    """
    from voxdiff.metrics.image import default_data_range, psnr

    out: dict = {}
    for d in doses:
        key = f"{prefix}_{d}"
        table = np.zeros((len(subjects), len(grid)))
        psd_sum, std_rel = None, []
        for n, s in enumerate(subjects):
            truth, low = s.images["truth"], s.images[key]
            rng = default_data_range(truth, s.brain)
            for j, fwhm in enumerate(grid):
                table[n, j] = psnr(psr.gaussian(low, fwhm, s.spacing), truth, rng, s.brain)
            if bm4d_mode:
                scale = float(low.mean())
                noise = np.where(s.brain, low - truth, 0.0)
                noise[s.brain] -= noise[s.brain].mean()  # the noise, not OSEM's small low-count bias
                n_brain = int(s.brain.sum())
                psd = np.abs(np.fft.fftn(noise)) ** 2 * (noise.size / n_brain) / scale ** 2
                psd_sum = psd if psd_sum is None else psd_sum + psd
                std_rel.append(float(noise[s.brain].std()) / scale)
        mean = table.mean(0)
        best = int(np.argmax(mean))
        out[d] = {"fwhm_mm": grid[best], "fit_psnr": float(mean[best]),
                  "curve": {f"{g:g}": round(float(v), 4) for g, v in zip(grid, mean)}}
        if bm4d_mode:
            out[d]["bm4d_psd_rel"] = psd_sum / len(subjects)
            out[d]["bm4d_sigma_rel"] = float(np.sqrt(np.mean(np.square(std_rel))))
    return out


def bm4d_denoise(low: np.ndarray, fit: dict, mode: str, power: float = 1.0) -> np.ndarray:
    """BM4D of ``low`` with the training split's relative noise model scaled to this image's mean.

    ``power`` multiplies the noise power (``--bm4d-scale``; 1 = as measured on the training split).
    """
    import bm4d

    if not hasattr(np, "trapz"):  # bm4d 4.2.5 calls np.trapz, which numpy 2 renamed
        np.trapz = np.trapezoid
    scale = float(low.mean()) * math.sqrt(power)
    if mode == "white":
        sigma = fit["bm4d_sigma_rel"] * scale
    else:
        psd = fit["bm4d_psd_rel"]
        if psd.shape != low.shape:
            raise SystemExit(f"bm4d: the training noise spectrum is {psd.shape}, the test volume {low.shape}")
        sigma = psd * scale ** 2
    return np.asarray(bm4d.bm4d(low.astype(np.float32), sigma), dtype=np.float64)


# --- trained methods -------------------------------------------------------------------------------

def run_folder_info(path: str, step: int, out_dir: str | None = None) -> dict:
    """Training steps, time and s/step up to ``step`` from a checkpoint's run folder (``train_log.csv``).

    A checkpoint copied out of its run (e.g. an early ``step_*.pt`` kept for an equal-steps row) is
    looked up in its config's ``train.out_dir``.
    """
    p = Path(path)
    folder = p if p.is_dir() else p.parent
    if not (folder / "train_log.csv").exists() and out_dir and (Path(out_dir) / "train_log.csv").exists():
        folder = Path(out_dir)
    log = folder / "train_log.csv"
    info: dict = {"run_folder": str(folder)}
    if not log.exists():
        return info
    with open(log, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("step") and r.get("sec_per_step") and int(r["step"]) <= step]
    if not rows:
        return info
    steps = [int(r["step"]) for r in rows]
    if step - steps[-1] > max(50, step // 100):
        # Not this checkpoint's log: another run now writes to the folder its config names
        # (e.g. a shipped model retrained into the same out_dir, with fewer steps so far).
        return info
    sec = [float(r["sec_per_step"]) for r in rows]
    # Each logged row times one step; the steps between two rows are taken to cost the same.
    compute = sum(s * (b - a) for s, a, b in zip(sec, [0] + steps[:-1], steps))
    info.update(log_steps=steps[-1], s_per_step_median=float(np.median(sec)), train_compute_s=compute)
    cfg = folder / "config.yaml"
    last = max((q for q in folder.glob("*.pt")), key=lambda q: q.stat().st_mtime, default=None)
    if cfg.exists() and last is not None and step >= steps[-1]:
        info["train_wall_s_files"] = last.stat().st_mtime - cfg.stat().st_mtime
    return info


def _steps(info: dict) -> str:
    """A method's training steps for the table: a fine-tune's as ``start + own``."""
    own = info.get("steps_trained")
    if own is None:
        return "–"
    return f"{info['steps_init']} + {own}" if info.get("steps_init") else str(own)


def memory_table(paths: list[Path]) -> dict[str, float]:
    """Training-step peak MiB per method name (a config's file stem) from ``voxdiff bench memory --json`` files."""
    out = {}
    for path in paths:
        for row in json.loads(Path(path).read_text()).get("results", []):
            if row.get("method") is not None and row.get("peak_mib") is not None:
                out[str(row["method"])] = float(row["peak_mib"])
    return out


class TrainedMethod:
    """A checkpoint served like ``voxdiff translate``: whole volume, or sliding windows at ``sw_roi``."""

    def __init__(self, spec: dict, test: list[str]):
        from voxdiff.pipelines import load_pipeline

        self.name, self.path, self.options = spec["name"], spec["path"], dict(spec["options"])
        self.pipe = load_pipeline(self.path)
        cfg = self.pipe.checkpoint["config"]
        split = self.pipe.checkpoint.get("split") or {}
        if sorted(split.get("test", [])) != sorted(test):
            raise SystemExit(f"--model {self.name}: {self.path} was trained with another test split "
                             f"({len(split.get('test', []))} test cases) than the race's {len(test)}")
        from voxdiff.train.trainer import role_columns

        # A model trained on several doses lists several columns: its first one is validation's.
        source = role_columns(cfg["data"].get("roles") or {}, ("source",))["source"][0]
        # low_5 -> 5; nac_low_5 (the joint NAC -> AC task) -> 5 as well: --input picks the image family.
        self.dose = str(self.options.pop("dose", source.rsplit("low_", 1)[1] if "low_" in source else "5"))
        self.downsample = int(cfg["data"].get("downsample", 1))
        blind = bool(self.options.get("blind", 0))
        names = self.pipe.task.conditions.names
        if names and set(names) != {"dose"}:
            raise SystemExit(f"--model {self.name}: the race can give a 'dose' condition only, not {', '.join(names)}")
        self.conditions = {"dose": float(self.dose)} if names and not blind else None
        roi = self.options.pop("sw_roi", None)
        crop = cfg["data"]["crop_size"]
        self.sw_roi = None if roi is None else (tuple(crop) if roi == "crop" and isinstance(crop, list)
                                                else int(crop) if roi == "crop" else int(roi))
        opts = ",".join(f"{k}={v}" for k, v in sorted({**self.options, "sw_roi": self.sw_roi}.items()))
        step = int(self.pipe.checkpoint.get("step", 0))
        self.cache_key = f"{self.name}-step{step}-{opts}".replace("/", "_").replace(" ", "")
        self.info = {"kind": "checkpoint", "path": self.path, "task": self.pipe.name, "dose": self.dose,
                     "conditions": self.conditions or ("blind" if names else None),
                     "options": {**self.options, "sw_roi": self.sw_roi},
                     "served": f"sliding windows {self.sw_roi}" if self.sw_roi else "whole volume",
                     "steps_trained": step,
                     # A fine-tune's own steps leave out the start model's: the table shows both.
                     "steps_init": int((self.pipe.checkpoint.get("init") or {}).get("step", 0)),
                     "precision": cfg["train"]["precision"], "batch_size": cfg["train"]["batch_size"],
                     "crop_size": crop, "downsample": self.downsample, "schedule": None,
                     **run_folder_info(self.path, step, cfg["train"].get("out_dir"))}

    def __call__(self, low: np.ndarray, affine: np.ndarray) -> np.ndarray:
        """The prediction for one low-dose volume, in its units."""
        from voxdiff.io import Volume

        opts = {k: v for k, v in self.options.items() if k != "blind"}
        out = self.pipe(Volume(array=low.astype(np.float32), affine=affine), sw_roi=self.sw_roi,
                        conditions=self.conditions, **opts)
        self.info["schedule"] = {k: v for k, v in out.info.items() if k not in ("model", "seconds")}
        return np.asarray(out["output"].array, dtype=np.float64)


def cached(folder: Path | None, key: str, case: str, dose: str, compute) -> tuple[np.ndarray, float]:
    """``compute()`` and its seconds, or both read back from ``folder`` (``--cache``) when stored there.

    The key names the method and everything its output depends on (a checkpoint's path, step and
    options; BM4D's noise model and fitting set); delete the folder after changing anything else.
    """
    stem = None if folder is None else Path(folder) / key / f"{case}_low_{dose}"
    if stem is not None and stem.with_suffix(".json").exists():
        return np.load(stem.with_suffix(".npy")).astype(np.float64), float(json.loads(stem.with_suffix(".json").read_text())["seconds"])
    t0 = time.perf_counter()
    out = compute()
    sec = time.perf_counter() - t0
    if stem is not None:
        from voxdiff.io.atomic import atomic_write_text

        stem.parent.mkdir(parents=True, exist_ok=True)
        np.save(stem.with_suffix(".npy"), out.astype(np.float32))  # written before its .json marks it complete
        atomic_write_text(stem.with_suffix(".json"), json.dumps({"seconds": sec}))
    return out, sec


# --- scoring ----------------------------------------------------------------------------------------

def gaussian_curve(s: psr.Subject, low: np.ndarray, fwhms: list[float]) -> dict:
    """Per FWHM, each lesion's activity-referenced CRC and BV of the Gaussian-filtered ``low`` (the filter's CRC-BV curve)."""
    from voxdiff.metrics import lesion_crc

    lesions = s.table["lesions"]
    if not lesions:
        return {}
    true_ratio = [r["roi_mean"] / r["background_mean"] for r in
                  lesion_crc(s.images["activity"], lesions, s.spacing, lesion_map=s.lesion_map, regions=s.regions)]
    eff = [{**les, "contrast": ratio} for les, ratio in zip(lesions, true_ratio)]
    out = {}
    for fwhm in fwhms:
        rows = lesion_crc(psr.gaussian(low, fwhm, s.spacing), eff, s.spacing, lesion_map=s.lesion_map, regions=s.regions)
        out[f"{fwhm:g}"] = [{"diameter_mm": les["diameter_mm"], "true_ratio": ratio, "crc_act": r["crc"], "bv": r["bv"]}
                            for les, ratio, r in zip(lesions, true_ratio, rows)]
    return out


def summarise_curve(rows: list[dict], fwhms: list[float]) -> dict:
    """Mean CRC (lesions with a true ratio >= MIN_TRUE_RATIO) and BV per size bin, per FWHM of the curve."""
    from voxdiff.metrics.pet import DEFAULT_SIZE_BINS_MM, size_bin

    out = {}
    for fwhm in fwhms:
        per = [les for r in rows for les in r.get("gaussian_curve", {}).get(f"{fwhm:g}", [])]
        out[f"{fwhm:g}"] = {f"{b:g}mm": {"crc_act": psr._ms([x["crc_act"] for x in per if size_bin(x["diameter_mm"]) == b
                                                             and x["true_ratio"] >= psr.MIN_TRUE_RATIO]),
                                         "bv": psr._ms([x["bv"] for x in per if size_bin(x["diameter_mm"]) == b])}
                            for b in DEFAULT_SIZE_BINS_MM}
    return out


def _f(x: dict | None, digits: int = 2) -> str:
    return "–" if not x or not x.get("n") else f"{x['mean']:.{digits}f} ± {x['sd']:.{digits}f}"


def _num(value: float | None, divide: float, spec: str) -> str:
    return "–" if value is None else format(value / divide, spec)


def _best(values: dict[str, float], larger: bool) -> set[str]:
    ok = {k: v for k, v in values.items() if v is not None and math.isfinite(v)}
    if not ok:
        return set()
    target = max(ok.values()) if larger else min(ok.values())
    return {k for k, v in ok.items() if v == target}


def markdown(report: dict) -> str:
    """Two tables per dose (image quality and bias; lesions, hot spots and cost) plus the BM4D-subset table."""
    lines = [f"Command: `{report['command']}`", "",
             (f"Machine: {report['machine']}. Date: {report['date']}. Data: `{report['data']}` "
              f"({report['n_ids']} subjects; split {report['split']}: {len(report['test'])} {report.get('scored_split', 'test')} subjects scored, "
              f"fitting on {len(report['fit_cases'])} training subjects). Resolution: {report['resolution_mm']} mm."), ""]
    for d, block in report["doses"].items():
        s, names, meth = block["summary"], block["names"], report["methods"]
        label = {n: block["labels"][n] for n in names}
        psnr = {n: s["images"][n]["psnr_truth"]["mean"] for n in names if n != "full"}
        ssim = {n: s["images"][n]["ssim_truth"]["mean"] for n in names if n != "full"}
        bp, bs = _best(psnr, True), _best(ssim, True)

        def bold(n, text, best):
            return f"**{text}**" if n in best else text

        ref = block.get("paired_vs")
        paired = block.get("paired", {})
        lines += [f"### {d} % dose: image quality and regional bias (vs the noise-free truth unless noted)", "",
                  "| method | served | n | PSNR | SSIM | NRMSE | "
                  + (f"ΔPSNR vs {ref} (paired) | ΔSSIM vs {ref} (paired) | " if ref else "")
                  + "PSNR vs full | SSIM vs full | bias GM % | bias WM % | bias deep GM % | bias cerebellum % | seam r=2 | seam r=4 |",
                  "|---|---|" + "---:|" * (12 + (2 if ref else 0))]
        for n in names:
            m = s["images"][n]
            pair = (f"{_f(paired[n]['psnr'])} | {_f(paired[n]['ssim'], 3)} | " if ref else "")
            lines.append(f"| {label[n]} | {meth[n].get('served', '–')} | {m['psnr_truth']['n']} | "
                         f"{bold(n, _f(m['psnr_truth']), bp)} | {bold(n, _f(m['ssim_truth'], 3), bs)} | "
                         f"{_f(m['nrmse_truth'], 3)} | {pair}"
                         f"{_f(m.get('psnr_full'))} | {_f(m.get('ssim_full'), 3)} | "
                         + " | ".join(_f(m[f"bias_{r}"]) for r in REGIONS)
                         + f" | {_f(m.get('seam2'), 3)} | {_f(m.get('seam4'), 3)} |")
        bins = list(s["crc"][names[0]].keys())
        t = s["crc"][names[0]]
        lines += ["", f"### {d} % dose: lesions, invented hot spots, cost", "",
                  "CRC: activity-referenced (as benchmarks/pet_simulation_report.py; lesions with a true ratio below "
                  f"{psr.MIN_TRUE_RATIO:g} left out), mean ± sd over lesions (n per bin: "
                  + ", ".join(f"{b} {t[b]['crc_act']['n']}" for b in bins) + "); the truth's own CRC: "
                  + ", ".join(f"{b} {_f(t[b]['crc_truth_act'])}" for b in bins)
                  + ". BV: std/mean of the background shell. Hot spots: 26-connected clusters of contrast >= 1.5 vs "
                    "the local same-tissue background that the truth lacks, per lesion-free test subject "
                    f"({s['hotspots'][names[0]]['subjects']} of them; in very noisy images the clusters merge, so read "
                    "the count with the largest cluster).", "",
                  "| method | " + " | ".join(f"CRC {b}" for b in bins) + " | " + " | ".join(f"BV {b}" for b in bins)
                  + " | hot spots / subject | largest spot (voxels) | s / volume | train steps | train time (min) | s / step "
                    "| train-step MiB |",
                  "|---|" + "---:|" * (2 * len(bins) + 7)]
        for n in names:
            c, h, i = s["crc"][n], s["hotspots"][n], meth[n]
            tt = i.get("train_compute_s")
            lines.append(f"| {label[n]} | " + " | ".join(_f(c[b]["crc_act"]) for b in bins) + " | "
                         + " | ".join(_f(c[b]["bv"], 3) for b in bins) + f" | {_f(h['count'], 1)} | {_num(h['largest_cluster_voxels'], 1, '.0f')} | "
                         f"{_f(block['seconds'][n], 1)} | {_steps(i)} | "
                         f"{_num(tt, 60, '.0f')} | {_num(i.get('s_per_step_median'), 1, '.2f')} | "
                         f"{_num(i.get('memory_mib'), 1, '.0f')} |")
        if block.get("subset"):
            sub = block["subset"]
            lines += ["", f"### {d} % dose on the BM4D subset ({len(sub['cases'])} test subjects: {', '.join(sub['cases'])})", "",
                      "| method | PSNR | SSIM | NRMSE | hot spots |", "|---|---:|---:|---:|---:|"]
            for n in names:
                m = sub["summary"]["images"][n]
                lines.append(f"| {label[n]} | {_f(m['psnr_truth'])} | {_f(m['ssim_truth'], 3)} | {_f(m['nrmse_truth'], 3)} | "
                             f"{_f(sub['summary']['hotspots'][n]['count'], 1)} |")
        lines.append("")
    return "\n".join(lines) + "\n"


def crc_bv_plot(report: dict, path: Path) -> None:
    """Mean CRC against mean BV per lesion size bin, one point per method and dose."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    first = next(iter(report["doses"].values()))
    bins = list(first["summary"]["crc"][first["names"][0]].keys())
    fig, axes = plt.subplots(1, len(bins), figsize=(4.4 * len(bins), 4.0), squeeze=False)
    markers = "os^vDPX*<>"
    for j, b in enumerate(bins):
        ax = axes[0, j]
        for k, (d, block) in enumerate(report["doses"].items()):
            for i, n in enumerate(block["names"]):
                c = block["summary"]["crc"][n][b]
                if not c["crc_act"]["n"]:
                    continue
                ax.errorbar(c["bv"]["mean"], c["crc_act"]["mean"], yerr=c["crc_act"]["sd"] / math.sqrt(c["crc_act"]["n"]),
                            fmt=markers[k % len(markers)], color=f"C{i % 10}", capsize=2,
                            label=f"{block['labels'][n]}" + (f" ({d} %)" if len(report["doses"]) > 1 else ""))
            gc = block.get("gaussian_curve") or {}
            if gc:
                pts = [(v[b]["bv"]["mean"], v[b]["crc_act"]["mean"], f) for f, v in gc.items() if v[b]["crc_act"]["n"]]
                if pts:
                    ax.plot([p[0] for p in pts], [p[1] for p in pts], "-", color="0.5", lw=1, zorder=0,
                            label="Gaussian FWHM sweep" + (f" ({d} %)" if len(report["doses"]) > 1 else ""))
                    for x, y, f in pts:
                        ax.annotate(f"{f}", (x, y), fontsize=6, color="0.4", xytext=(2, 2), textcoords="offset points")
        ax.set_title(f"{b} lesions")
        ax.set_xlabel("background variability (std / mean)")
        ax.set_ylabel("CRC (activity-referenced)")
        ax.grid(alpha=0.3)
    handles = {}
    for ax in axes[0]:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lab, h)
    if handles:
        axes[0, 0].legend(list(handles.values()), list(handles), fontsize=7, loc="best")
    fig.suptitle(f"PET race: CRC vs BV on {len(report['test'])} held-out subjects (error bars: s.e.m. over lesions)", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --- main -------------------------------------------------------------------------------------------

def run(args: argparse.Namespace) -> dict:
    """Fit, denoise and score; returns the report (also written to ``args.out``)."""
    from voxdiff.io.atomic import atomic_write_text

    start = time.perf_counter()
    if args.labels_dir is None:
        from voxdiff.paths import shared_data_dir

        args.labels_dir = shared_data_dir() / "ixi-t1-2mm" / "labels"
    doses = [d.strip() for d in args.doses.split(",") if d.strip()]
    builtin = [m.strip() for m in args.methods.split(",") if m.strip()]
    bad = [m for m in builtin if m not in BUILTIN]
    if bad:
        raise SystemExit(f"--methods: unknown {', '.join(bad)} (built-in: {', '.join(BUILTIN)}; checkpoints go in --model)")
    sp = race_split(args.data, args.labels_dir, args.config)
    split = sp["split"]
    complete = {p.name[: -len("_pet.json")] for p in args.data.glob("*_pet.json")}
    # --split val scores the validation subjects (the shipped model's card); the race itself is on test.
    test = [c for c in split[args.split] if c in complete]
    if len(test) < len(split[args.split]):
        raise SystemExit(f"{len(split[args.split]) - len(test)} {args.split} subject(s) are not complete yet in {args.data}")
    if args.max_test:
        test = test[: args.max_test]
    fit_cases = [c for c in split["train"] if c in complete][: args.fit_subjects]
    models = [TrainedMethod(parse_model(m), split["test"]) for m in args.model]
    for m in models:
        if m.downsample != args.downsample:
            raise SystemExit(f"--model {m.name}: trained with data.downsample {m.downsample}; run the race with "
                             f"--downsample {m.downsample} (it scores every method at one resolution)")
    mem = memory_table(args.memory_json)
    print(f"{sp['n_ids']} ids ({sp['ids_from']}); test {len(test)}, fitting {len(fit_cases)}; "
          f"methods {builtin + [m.name for m in models]}", flush=True)
    low_roles = tuple(f"{args.input}_{d}" for d in doses)
    fit = {}
    if "gaussian" in builtin or "bm4d" in builtin:
        t0 = time.perf_counter()
        fit_subjects = [load_subject(args.data, args.labels_dir, c, ("truth", *low_roles), args.downsample) for c in fit_cases]
        fit = fit_baselines(fit_subjects, doses, sorted({float(v) for v in args.fwhm_grid.split(",")}),
                            args.bm4d_noise if "bm4d" in builtin else None, args.input)
        del fit_subjects
        print(f"fit in {time.perf_counter() - t0:.0f} s: " + ", ".join(f"{d} %: FWHM {fit[d]['fwhm_mm']:g} mm" for d in doses), flush=True)
    bm4d_cases = test if not args.bm4d_subjects else test[: args.bm4d_subjects]
    roles = ("truth", "full", *low_roles, "activity", "lesions")
    methods_info = {"identity": {"kind": "low-dose input"}, "full": {"kind": "full-dose image (reference)"},
                    "gaussian": {"kind": "Gaussian post-filter, FWHM fitted per dose on the training split"},
                    "bm4d": {"kind": f"BM4D, {args.bm4d_noise} noise model fitted on the training split, "
                                     f"noise power x {args.bm4d_scale:g}",
                             "subjects": bm4d_cases}}
    for m in models:
        methods_info[m.name] = m.info
        m.info["memory_mib"] = mem.get(m.name, mem.get(Path(str(m.info.get("run_folder", ""))).name))
    curve = sorted({float(v) for v in args.gaussian_curve.split(",") if v.strip()})
    blocks = {d: {"rows": [], "seconds": {}} for d in doses}
    for n, case in enumerate(test):
        s = load_subject(args.data, args.labels_dir, case, roles, args.downsample)
        for d in doses:
            low = s.images[f"{args.input}_{d}"]
            preds, secs = {}, {}
            for name in builtin:
                t0 = time.perf_counter()
                if name == "identity":
                    preds[name] = low
                elif name == "full":
                    preds[name] = s.images["full"]
                elif name == "gaussian":
                    preds[name] = psr.gaussian(low, fit[d]["fwhm_mm"], s.spacing)
                elif case in bm4d_cases:
                    key = f"bm4d-{args.bm4d_noise}-fit{len(fit_cases)}-ds{args.downsample}" + (
                        f"-x{args.bm4d_scale:g}" if args.bm4d_scale != 1 else "")
                    preds[name], secs[name] = cached(args.cache, key, case, d,
                                                     lambda low=low, f=fit[d]: bm4d_denoise(low, f, args.bm4d_noise, args.bm4d_scale))
                    continue
                else:
                    continue
                secs[name] = time.perf_counter() - t0
            for m in models:
                if m.dose == d:
                    preds[m.name], secs[m.name] = cached(args.cache, m.cache_key + ("" if args.input == "low" else f"-{args.input}"), case, d,
                                                                 lambda m=m, low=low, aff=s.affine: m(low, aff))
            row = psr.score_images(s, preds)
            if curve:
                row["gaussian_curve"] = gaussian_curve(s, low, curve)
            blocks[d]["rows"].append(row)
            for k, v in secs.items():
                blocks[d]["seconds"].setdefault(k, []).append(v)
            print(f"test {n + 1}/{len(test)} {case} {d} %: PSNR vs truth "
                  + ", ".join(f"{k} {row['images'][k]['psnr_truth']:.2f} ({secs[k]:.1f} s)" for k in preds), flush=True)
    out_doses = {}
    for d, b in blocks.items():
        rows = b["rows"]
        names = [n for n in [*builtin, *(m.name for m in models if m.dose == d)] if n in rows[0]["images"] or n == "bm4d"]
        # A method scored on a subset only (bm4d) is summarised over the subjects it ran on.
        summary = {"images": {}, "crc": {}, "hotspots": {}}
        for n in names:
            have = [r for r in rows if n in r["images"]]
            if not have:
                continue
            part = psr.summarise(have, [n])
            for k, table in summary.items():
                table[n] = part[k][n]
        names = [n for n in names if n in summary["images"]]
        labels = {n: (f"gaussian {fit[d]['fwhm_mm']:g} mm" if n == "gaussian" else n) for n in names}
        block = {"names": names, "labels": labels, "summary": summary,
                 "seconds": {n: psr._ms(b["seconds"].get(n, [])) for n in names}, "subjects": rows}
        # Subjects differ by ~3 dB in PSNR (a hot lesion sets the data range): paired differences
        # against the Gaussian filter, subject by subject, separate methods that the sd hides.
        ref = "gaussian" if "gaussian" in names else None
        block["paired_vs"] = ref
        block["paired"] = {n: {k: psr._ms([r["images"][n][f"{k}_truth"] - r["images"][ref][f"{k}_truth"]
                                           for r in rows if n in r["images"]]) for k in ("psnr", "ssim")}
                           for n in names if ref is not None}
        if curve:
            block["gaussian_curve"] = summarise_curve(rows, curve)
        if "bm4d" in names and len(bm4d_cases) < len(test):
            sub = [r for r in rows if r["case"] in bm4d_cases]
            block["subset"] = {"cases": bm4d_cases, "summary": psr.summarise(sub, names)}
        out_doses[d] = block
    report = {
        "benchmark": "pet_race", "date": datetime.now().isoformat(timespec="minutes"),
        "command": " ".join(shlex.quote(a) for a in sys.argv),
        "machine": args.machine or f"{platform.machine()}, {platform.processor() or 'CPU'}, torch threads 1",
        "data": str(args.data), "ids_from": sp["ids_from"], "n_ids": sp["n_ids"], "config": str(args.config),
        "split": sp["opts"], "scored_split": args.split, "input": args.input, "test": test, "fit_cases": fit_cases, "resolution_mm": 2.0 * args.downsample,
        "downsample": args.downsample,
        "fit": {d: {k: v for k, v in f.items() if k != "bm4d_psd_rel"} for d, f in fit.items()},
        "bm4d_noise": args.bm4d_noise, "methods": methods_info, "doses": out_doses,
        "seconds_total": round(time.perf_counter() - start, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(report, indent=1, default=float, allow_nan=True))
    atomic_write_text(args.out.with_suffix(".md"), markdown(report))
    if args.figure is not None:
        crc_bv_plot(report, args.figure)
    return report


def parser() -> argparse.ArgumentParser:
    """The command line (see the module docstring)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("/work/data/pet-proj"))
    ap.add_argument("--input", choices=("low", "nac_low"), default="low",
                    help="input images: low_<dose> (denoising) or nac_low_<dose> (the joint low-dose NAC -> full-dose AC task)")
    ap.add_argument("--split", choices=("test", "val"), default="test",
                    help="subjects to score: the held-out test split (the race) or the validation split (model cards)")
    ap.add_argument("--labels-dir", type=Path, default=None, help="default: the shared IXI labels")
    ap.add_argument("--config", type=Path, default=REPO / "configs" / "pet_proj_ppdm_r2.yaml",
                    help="config whose data.split_seed / val_fraction / test_fraction define the split")
    ap.add_argument("--doses", default="5", help="comma-separated dose percentages, e.g. 5,1")
    ap.add_argument("--methods", default="identity,full,gaussian,bm4d", help=f"built-in methods: {', '.join(BUILTIN)}")
    ap.add_argument("--model", action="append", default=[], help="NAME=PATH[:key=value,...], repeatable")
    ap.add_argument("--fit-subjects", type=int, default=8)
    ap.add_argument("--fwhm-grid", default="0,2,3,4,5,6,7,8,10,12")
    ap.add_argument("--gaussian-curve", default="",
                    help="FWHMs (mm) of a Gaussian CRC-vs-BV sweep drawn in the figure (evaluation only; the "
                         "gaussian row keeps its training-fitted FWHM), e.g. 2,4,6,8,10")
    ap.add_argument("--bm4d-noise", choices=("psd", "white"), default="psd")
    ap.add_argument("--bm4d-scale", type=float, default=1.0,
                    help="multiplier of BM4D's noise power (1 = as measured on the training split)")
    ap.add_argument("--bm4d-subjects", type=int, default=0, help="BM4D on the first N test subjects only (0 = all)")
    ap.add_argument("--max-test", type=int, default=0, help="score at most this many test subjects (0 = all)")
    ap.add_argument("--downsample", type=int, default=1, help="block-average every volume (2 = 4 mm, for 4 mm models)")
    ap.add_argument("--memory-json", type=Path, action="append", default=[],
                    help="voxdiff bench memory --config CONFIG --json output (repeatable); matched to a checkpoint "
                         "by its NAME or its run folder's name (= the config's file stem)")
    ap.add_argument("--cache", type=Path, default=None,
                    help="folder keeping BM4D and checkpoint outputs per subject, reused by later runs")
    ap.add_argument("--machine", default=None, help="machine description for the report")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "pet_race.json")
    ap.add_argument("--figure", type=Path, default=None)
    return ap


def main() -> None:
    """Command-line entry point."""
    import torch

    torch.set_num_threads(1)
    report = run(parser().parse_args())
    print(markdown(report))
    print(f"done in {report['seconds_total']:.0f} s")


if __name__ == "__main__":
    main()
