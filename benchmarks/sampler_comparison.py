"""Samplers compared on one trained model: DPM-Solver++ at few steps against DDIM-50 and DDPM-1000.

Three modes, each writing ``OUT_DIR/sampler_comparison_<mode>.json`` and ``.md``:

* ``analytic``: no network. Data are voxel-wise i.i.d. from a Gaussian and from a two-component
  Gaussian mixture, whose exact denoiser ``E[x0 | x_t]`` (``voxdiff.diffusion.analytic``) stands
  in for a perfectly trained model. Reports the error of the sample mean and std against the
  data distribution, and for deterministic runs the RMS distance to a T-step DDIM (eta 0)
  solution of the probability-flow ODE from the same initial noise.
* ``segmentation``: a PD-DDPM checkpoint (+ its pre-segmentation checkpoint for ``pd``) on the
  held-out cases of a manifest (the checkpoint's split, as ``segmentation_quality.py``): per-class
  Dice of each sampler from pure noise (``vanilla``) and from the pre-segmentation forward-diffused
  to ``t'`` (``pd``), and seconds per volume.
* ``synthesis``: a synthesis checkpoint; the distribution checks of ``synthesis_quality.py``
  (its functions) for each sampler's samples against the real training volumes, and seconds
  per sample.

A run is ``SAMPLER:STEPS[:ETA]`` (``STEPS`` may be ``all``: every timestep from the start);
``ETA`` defaults to 1 for ``ddpm`` and 0 otherwise. Examples::

    python benchmarks/sampler_comparison.py analytic --out-dir benchmarks/results/samplers
    python benchmarks/sampler_comparison.py segmentation --seg runs/seg/last.pt --preseg runs/preseg/last.pt \\
        --manifest data/seg/manifest.csv --cases 3 --start-step 250 --out-dir benchmarks/results/samplers
    python benchmarks/sampler_comparison.py synthesis --model runs/idm/last.pt --data ../shared/data/ixi-t1-2mm \\
        --samples 4 --runs dpmsolver++:10 ddim:50 --out-dir benchmarks/results/samplers
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from voxdiff.diffusion import DDPMProcess, sample_loop
from voxdiff.diffusion.analytic import GaussianMixtureDenoiser
from voxdiff.diffusion.samplers import SAMPLERS
from voxdiff.io import atomic_write_text

DEFAULT_RUNS = ["dpmsolver++:5", "dpmsolver++:10", "dpmsolver++:20", "ddim:50"]
ANALYTIC_RUNS = ["dpmsolver++:5", "dpmsolver++:10", "dpmsolver++:20", "ddim:10", "ddim:20", "ddim:50", "ddpm:50",
                 "ddpm:1000"]
DISTRIBUTIONS = {"gaussian": ([0.3], [0.5], None), "mixture": ([-0.5, 0.6], [0.15, 0.2], [0.3, 0.7])}


@dataclass
class Run:
    """One sampler setting: ``steps`` is an int or ``"all"`` (every timestep from the start)."""

    sampler: str
    steps: int | str
    eta: float

    @property
    def label(self) -> str:
        """``sampler-steps`` (and ``eta`` where it is not the sampler's usual one)."""
        usual = 1.0 if self.sampler == "ddpm" else 0.0
        return f"{self.sampler}-{self.steps}" + ("" if self.eta == usual else f" (eta {self.eta:g})")

    def resolve(self, top: int) -> int:
        """The number of steps when ``top`` is the most the start allows."""
        return top if self.steps == "all" else int(self.steps)


def parse_run(spec: str) -> Run:
    """``SAMPLER:STEPS[:ETA]`` -> :class:`Run`."""
    parts = spec.split(":")
    if len(parts) not in (2, 3) or parts[0] not in SAMPLERS:
        raise SystemExit(f"error: run {spec!r} must be SAMPLER:STEPS[:ETA] with SAMPLER one of {', '.join(SAMPLERS)}")
    steps: int | str = parts[1] if parts[1] == "all" else int(parts[1])
    eta = float(parts[2]) if len(parts) == 3 else (1.0 if parts[0] == "ddpm" else 0.0)
    return Run(parts[0], steps, eta)


def _fmt(v: Any, digits: int = 4) -> str:
    if isinstance(v, float):
        return "nan" if not math.isfinite(v) else f"{v:.{digits}f}"
    return "-" if v is None else str(v)


def _table(rows: list[dict[str, Any]], cols: list[tuple[str, str]]) -> list[str]:
    lines = ["| " + " | ".join(c for c, _ in cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_fmt(r.get(k)) for _, k in cols) + " |" for r in rows]
    return lines


def _write(out_dir: Path, mode: str, payload: dict[str, Any], markdown: list[str]) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / f"sampler_comparison_{mode}.json", json.dumps(payload, indent=1, default=str) + "\n")
    atomic_write_text(out_dir / f"sampler_comparison_{mode}.md", "\n".join(markdown) + "\n")
    print("\n".join(markdown))


# ----------------------------------------------------------------------------------- analytic
def run_analytic(args: argparse.Namespace) -> int:
    """Exact-denoiser comparison on Gaussian and Gaussian-mixture data."""
    runs = [parse_run(s) for s in (args.runs or ANALYTIC_RUNS)]
    shape = (1, 1, args.voxels, 1, 1)
    process = DDPMProcess(args.num_train_timesteps, beta_schedule=args.beta_schedule,
                          prediction_type=args.prediction_type, clip_sample=None)
    T = process.num_train_timesteps
    rows = []
    for dist, comps in DISTRIBUTIONS.items():
        oracle = GaussianMixtureDenoiser(process, *comps)
        gen = lambda: torch.Generator().manual_seed(args.seed)  # noqa: E731 - same initial noise for every run
        ode = sample_loop(oracle, process, shape, steps=T, sampler="ddim", sampler_options={"eta": 0.0},
                          generator=gen(), dtype=torch.float64)
        exact = oracle.sample((args.voxels,), torch.Generator().manual_seed(args.seed + 1)).numpy()
        for run in runs:
            k = run.resolve(T)
            t0 = time.perf_counter()
            x = sample_loop(oracle, process, shape, steps=k, sampler=run.sampler, sampler_options={"eta": run.eta},
                            generator=gen(), dtype=torch.float64)
            sec = time.perf_counter() - t0
            flat = x.flatten().numpy()
            det = run.eta == 0.0
            rows.append({"distribution": dist, "run": run.label, "sampler": run.sampler, "steps": k, "eta": run.eta,
                         "mean_error": float(flat.mean()) - oracle.mean, "std_error": float(flat.std()) - oracle.std,
                         "w1_to_exact": float(np.mean(np.abs(np.sort(flat) - np.sort(exact)))),
                         "rms_to_ode_ref": float((x - ode).pow(2).mean().sqrt()) if det else None,
                         "seconds": sec})
        ref_w1 = float(np.mean(np.abs(np.sort(oracle.sample((args.voxels,), torch.Generator().manual_seed(
            args.seed + 2)).numpy()) - np.sort(exact))))
        rows.append({"distribution": dist, "run": "exact draws (reference)", "w1_to_exact": ref_w1})
    meta = {"voxels": args.voxels, "T": T, "beta_schedule": args.beta_schedule,
            "prediction_type": args.prediction_type, "seed": args.seed,
            "distributions": {k: {"means": v[0], "stds": v[1], "weights": v[2]} for k, v in DISTRIBUTIONS.items()}}
    md = [f"# Samplers on an exact denoiser ({args.voxels} voxels, T = {T}, {args.beta_schedule} betas, "
          f"{args.prediction_type} prediction)", "",
          "Errors of the sample mean / std against the data distribution; W1 = 1-Wasserstein distance to as many "
          f"exact draws; ODE RMS = distance to a {T}-step DDIM (eta 0) from the same initial noise "
          "(deterministic runs only).", ""]
    md += _table(rows, [("data", "distribution"), ("run", "run"), ("mean err", "mean_error"), ("std err", "std_error"),
                        ("W1", "w1_to_exact"), ("ODE RMS", "rms_to_ode_ref"), ("sec", "seconds")])
    _write(args.out_dir, "analytic", {"meta": meta, "rows": rows}, md)
    return 0


# ------------------------------------------------------------------------------ segmentation
def _held_out(ckpt: dict, manifest: Path, split: str, n: int) -> list:
    """The checkpoint's ``split`` cases of the manifest (else its last ``n``), as segmentation_quality.py."""
    from voxdiff.data import load_manifest

    cases = load_manifest(manifest, roles=["image", "label"])
    wanted = set((ckpt.get("split") or {}).get(split) or [])
    chosen = [c for c in cases if c.id in wanted]
    if not chosen:
        print(f"warning: checkpoint has no '{split}' split; taking the last {n} manifest cases", file=sys.stderr)
        chosen = cases[-n:]
    return chosen[:n]


def run_segmentation(args: argparse.Namespace) -> int:
    """Dice and time of each sampler, from noise and from the pre-segmentation."""
    from voxdiff.data import check_label_values
    from voxdiff.io import load_volume
    from voxdiff.metrics import segmentation_metrics
    from voxdiff.pipelines.pipeline import load_pipeline

    runs = [parse_run(s) for s in (args.runs or DEFAULT_RUNS)]
    if "pd" in args.modes and args.preseg is None:
        raise SystemExit("error: --modes pd needs --preseg")
    seg = load_pipeline(args.seg, device=args.device, task="segmentation")
    pre = load_pipeline(args.preseg, device=args.device, task="preseg") if "pd" in args.modes else None
    T = seg.task.num_train_timesteps
    classes = list(range(1, int(seg.task.data_channels)))
    cases = _held_out(seg.checkpoint, args.manifest, args.split, args.cases)
    rows: list[dict[str, Any]] = []
    for ci, case in enumerate(cases):
        vol = load_volume(case.path("image"), role="image")
        ref = check_label_values(load_volume(case.path("label"), role="label"), str(case.path("label")))
        ref = ref.astype(np.int64)
        start = None
        if pre is not None:
            t0 = time.perf_counter()
            start = pre(vol)["labels"]
            sec = time.perf_counter() - t0
            rows.append({"case": case.id, "mode": "preseg", "run": "preseg", "steps": 0, "seconds": sec,
                         **_dice(segmentation_metrics, start.array, ref, classes, vol.spacing)})
        for mode in args.modes:
            top = T if mode == "vanilla" else args.start_step + 1
            for run in runs:
                k = run.resolve(top)
                if not 1 <= k <= top:
                    print(f"skip {run.label} in {mode}: {k} steps exceed {top}", file=sys.stderr)
                    continue
                t0 = time.perf_counter()
                out = seg(vol, start=start if mode == "pd" else None, mode=mode, steps=k, samples=args.samples,
                          sampler=run.sampler, eta=run.eta, seed=args.seed,
                          start_step=args.start_step if mode == "pd" else None)
                sec = time.perf_counter() - t0
                row = {"case": case.id, "mode": mode, "run": run.label, "sampler": run.sampler, "steps": k,
                       "eta": run.eta, "start_step": args.start_step if mode == "pd" else None, "seconds": sec,
                       **_dice(segmentation_metrics, out["labels"].array, ref, classes, vol.spacing)}
                rows.append(row)
                print(f"[{ci + 1}/{len(cases)}] {case.id} {mode} {run.label}: Dice {row['dice_mean']:.3f} "
                      f"({sec:.1f} s)", flush=True)
    summary = _mean_over_cases(rows, ["mode", "run"])
    meta = {"seg": str(args.seg), "preseg": str(args.preseg), "cases": [c.id for c in cases], "T": T,
            "start_step": args.start_step, "samples": args.samples, "device": args.device,
            "threads": torch.get_num_threads(), "seed": args.seed}
    md = [f"# Samplers on PD-DDPM segmentation ({len(cases)} cases, {args.samples} sample(s), t' = {args.start_step})",
          "", f"Model `{args.seg}`; preseg `{args.preseg}`; device {args.device}, {torch.get_num_threads()} thread(s). "
          "vanilla = from pure noise; pd = from the pre-segmentation forward-diffused to t'. "
          "Seconds per volume (all samples, the preseg pass excluded).", ""]
    md += _table(summary, [("mode", "mode"), ("run", "run"), ("K", "steps"), ("cases", "cases")]
                 + [(f"Dice c{k}", f"dice_c{k}") for k in classes] + [("Dice mean", "dice_mean"), ("sec", "seconds")])
    _write(args.out_dir, "segmentation", {"meta": meta, "summary": summary, "per_case": rows}, md)
    return 0


def _dice(metrics_fn, pred: np.ndarray, ref: np.ndarray, classes: list[int], spacing) -> dict[str, float]:
    m = metrics_fn(np.asarray(pred).astype(np.int64), ref, labels=classes, spacing=spacing)
    out = {f"dice_c{k}": float(m[k]["dice"]) for k in classes}
    out["dice_mean"] = float(np.mean([m[k]["dice"] for k in classes])) if classes else math.nan
    return out


def _mean_over_cases(rows: list[dict[str, Any]], keys: list[str]) -> list[dict[str, Any]]:
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(tuple(r.get(k) for k in keys), []).append(r)
    out = []
    for group in groups.values():
        agg = {k: group[0].get(k) for k in keys} | {"steps": group[0].get("steps"), "cases": len(group)}
        for key, value in group[0].items():
            if key not in agg and key != "case" and isinstance(value, float):
                agg[key] = float(np.nanmean([float(r[key]) for r in group]))
        out.append(agg)
    return out


# --------------------------------------------------------------------------------- synthesis
def run_synthesis(args: argparse.Namespace) -> int:
    """The distribution checks of synthesis_quality.py for each sampler's samples."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import synthesis_quality as sq

    from voxdiff.intensity import normalizer_from_dict
    from voxdiff.pipelines.pipeline import load_pipeline

    runs = [parse_run(s) for s in (args.runs or DEFAULT_RUNS)]
    pipe = load_pipeline(args.model, device=args.device, task="synthesis")
    task, ckpt = pipe.task, pipe.checkpoint
    role = task.output_role
    stored = (ckpt.get("dataset_normalizers") or {}).get(role)
    # The pipeline returns data units; the checks (as in synthesis_quality.py) are in training units.
    to_training = normalizer_from_dict(stored).forward if stored else (lambda a: a)
    factor = int(ckpt["config"]["data"].get("downsample", 1))
    geo = ckpt["reference_geometry"]
    shape = tuple(geo["shape"])
    spacing = float(np.linalg.norm(np.asarray(geo["affine"])[:3, 0]))
    t1 = Path(args.data) / "t1"
    train_ids = list(ckpt["split"]["train"])
    held = list(ckpt["split"].get("val", [])) + list(ckpt["split"].get("test", []))
    load = lambda c: sq.real_volume(t1 / f"{c}.nii.gz", factor, ckpt, role, shape, geo["affine"])  # noqa: E731
    real_train = [load(c) for c in train_ids]
    real_held = [load(c) for c in held]
    pooled = np.concatenate([r["values"] for r in sq.describe(real_train, spacing)])
    T = task.num_train_timesteps

    def summarise(name: str, vols: list[np.ndarray], extra: dict[str, Any]) -> dict[str, Any]:
        stats = sq.describe(vols, spacing)
        tm = np.array([r["tissue_means"] for r in stats])
        return {"run": name, "n": len(vols), **extra,
                "w1_to_train": float(np.mean([sq.wasserstein_1d(r["values"], pooled) for r in stats])),
                "head_litres": float(np.mean([r["head_litres"] for r in stats])),
                "dark_mean": float(tm[:, 0].mean()), "middle_mean": float(tm[:, 1].mean()),
                "bright_mean": float(tm[:, 2].mean()),
                "pairwise_rmse": sq.pairwise_rmse(vols) if len(vols) > 1 else math.nan}

    rows = [summarise("real held-out", real_held, {})] if real_held else []
    for run in runs:
        k = run.resolve(T)
        g = torch.Generator().manual_seed(args.seed)
        vols, t0 = [], time.perf_counter()
        for _ in range(args.samples):
            out = pipe(None, steps=k, generator=g, eta=run.eta, sampler=run.sampler)
            vols.append(np.asarray(to_training(out["output"].array), dtype=np.float32))
        sec = (time.perf_counter() - t0) / max(args.samples, 1)
        rows.append(summarise(run.label, vols, {"sampler": run.sampler, "steps": k, "eta": run.eta,
                                                "seconds_per_sample": sec}))
        print(f"{run.label}: W1 {rows[-1]['w1_to_train']:.3f} ({sec:.1f} s per sample)", flush=True)
    meta = {"model": str(args.model), "step": int(ckpt.get("step", -1)), "grid": list(shape), "spacing_mm": spacing,
            "samples": args.samples, "seed": args.seed, "device": args.device, "threads": torch.get_num_threads()}
    md = [f"# Samplers on synthesis (`{args.model}`, step {meta['step']}, grid {shape} at {spacing:g} mm, "
          f"{args.samples} sample(s) per run)", "",
          "Checks of synthesis_quality.py in normalised units: W1 of head intensities to the pooled real training "
          "cases, tissue-class means, head volume, diversity.", ""]
    md += _table(rows, [("run", "run"), ("n", "n"), ("W1 to train", "w1_to_train"), ("head (L)", "head_litres"),
                        ("dark", "dark_mean"), ("middle", "middle_mean"), ("bright", "bright_mean"),
                        ("pairwise RMSE", "pairwise_rmse"), ("sec/sample", "seconds_per_sample")])
    _write(args.out_dir, "synthesis", {"meta": meta, "rows": rows}, md)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run one mode; returns a process exit code."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="mode", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--runs", nargs="+", default=None, help="SAMPLER:STEPS[:ETA] settings to compare")
    common.add_argument("--seed", type=int, default=0)
    common.add_argument("--threads", type=int, default=None)
    common.add_argument("--out-dir", type=Path, default=Path("benchmarks/results/samplers"))
    a = sub.add_parser("analytic", parents=[common], help="exact Gaussian / mixture denoiser, no network")
    a.add_argument("--voxels", type=int, default=65536)
    a.add_argument("--num-train-timesteps", type=int, default=1000)
    a.add_argument("--beta-schedule", default="linear")
    a.add_argument("--prediction-type", default="epsilon")
    s = sub.add_parser("segmentation", parents=[common], help="PD-DDPM checkpoint on held-out cases")
    s.add_argument("--seg", required=True)
    s.add_argument("--preseg", default=None)
    s.add_argument("--manifest", required=True, type=Path)
    s.add_argument("--split", default="test")
    s.add_argument("--cases", type=int, default=3)
    s.add_argument("--modes", nargs="+", choices=["vanilla", "pd"], default=["vanilla", "pd"])
    s.add_argument("--start-step", type=int, default=250)
    s.add_argument("--samples", type=int, default=1)
    s.add_argument("--device", default="cpu")
    y = sub.add_parser("synthesis", parents=[common], help="synthesis checkpoint, distribution checks")
    y.add_argument("--model", required=True)
    y.add_argument("--data", required=True, help="IXI folder with t1/<case>.nii.gz")
    y.add_argument("--samples", type=int, default=4)
    y.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    return {"analytic": run_analytic, "segmentation": run_segmentation, "synthesis": run_synthesis}[args.mode](args)


if __name__ == "__main__":
    sys.exit(main())
