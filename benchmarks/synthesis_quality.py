"""IDM synthesis: sample montages next to real volumes and simple distribution checks.

Draws ``--samples`` volumes from a synthesis checkpoint (as ``voxdiff sample`` does) and compares
them with real IXI T1 volumes brought to the training grid exactly as training saw them (block
averaged by ``data.downsample``, normalised by the dataset scaler stored in the checkpoint):
the held-out cases of the checkpoint's split (val + test) and an equal number of training cases.

Convention: everything in the training's normalised units (configs/ixi_synthesis_idm.yaml: a
per-case percentile scaler, 0 -> -1 and the case's 99.5th percentile -> +1; MRI intensities have no
absolute unit and IXI scans differ up to 3x in scale). Synthetic volumes carry no labels,
so every check uses masks computed the same way from each volume's own intensities
(:mod:`voxdiff.metrics.synthesis`):

* head: voxels above the Otsu threshold of the volume (largest connected component, holes
  filled); histograms of intensity inside the head, compared by the 1-Wasserstein distance
  between each volume's head histogram and the pooled histogram of the real *training* cases
  (held-out real volumes give the reference level);
* tissue means: a 3-class 1-D k-means on head intensities, classes sorted by mean (dark =
  CSF/background-like, middle = GM-like, bright = WM-like), plus the head volume in litres;
* diversity: mean pairwise RMSE between volumes of one group, and for each volume the RMSE to
  its nearest *training* case (a memorisation check: a sample much closer to one training case
  than held-out real volumes are would be a copy).

* denoising profile (``--profile-t``): at each listed timestep, held-out volumes are noised and the
  model's x0 estimate is compared with the truth (RMSE), next to the RMSE of the mean held-out
  volume, the best a model can do when the noise hides everything; an x0 estimate worse than the
  mean at high t means the samples' global layout cannot come out right.

Example::

    python benchmarks/synthesis_quality.py --model runs/ixi_synthesis_idm/last.pt \\
        --data ../shared/data/ixi-t1-2mm --samples 8 --steps 50 --out-dir benchmarks/results/synthesis
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from voxdiff.intensity import normalizer_from_dict
from voxdiff.io import atomic_write_text, load_volume, save_volume
from voxdiff.metrics.synthesis import describe, nearest_rmse, pairwise_rmse, wasserstein_1d
from voxdiff.models import load_model
from voxdiff.ops.resample import downsample_volume
from voxdiff.ops.puzzle import crop_to, pad_spec, pad_to_multiple


def real_volume(path: Path, factor: int, ckpt: dict, role: str, shape, ref_affine) -> np.ndarray:
    """A real volume on the training grid, normalised as training normalised it."""
    from voxdiff.data.normalization import case_normalizers

    v = downsample_volume(load_volume(path), factor)
    norm = case_normalizers({role: v}, ckpt["config"]["data"].get("normalization"),
                            dataset_normalizers=ckpt.get("dataset_normalizers"))[role]
    arr = np.asarray(v.array if norm is None else norm.forward(v.array), dtype=np.float32)
    if tuple(arr.shape) != tuple(shape):
        raise SystemExit(f"{path}: grid {arr.shape} differs from the model's {tuple(shape)}")
    if not np.array_equal(_ornt(v.affine), _ornt(ref_affine)):
        raise SystemExit(f"{path}: orientation differs from the model's reference geometry")
    return arr


def _ornt(affine) -> np.ndarray:
    import nibabel as nib

    return nib.orientations.io_orientation(np.asarray(affine, dtype=np.float64))


def to_ras(vol: np.ndarray, affine) -> np.ndarray:
    """The array reoriented to RAS axes, so that slices are true axial/coronal/sagittal views."""
    import nibabel as nib

    return nib.orientations.apply_orientation(vol, _ornt(affine))


def montage(groups: dict[str, list[np.ndarray]], path: Path, affine, per_row: int = 8) -> None:
    """Rows of mid slices (axial, coronal, sagittal) per group, the same grey scale everywhere.

    All volumes share the orientation of ``affine``; they are shown in RAS, radiological
    left-right as is usual for axial and coronal views (patient's right on the image's left)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    views = [("axial", lambda v: np.fliplr(np.rot90(v[:, :, v.shape[2] // 2]))),
             ("coronal", lambda v: np.fliplr(np.rot90(v[:, v.shape[1] // 2, :]))),
             ("sagittal", lambda v: np.rot90(v[v.shape[0] // 2, :, :]))]
    nrows = len(groups) * len(views)
    fig, axes = plt.subplots(nrows, per_row, figsize=(1.6 * per_row, 1.6 * nrows), squeeze=False)
    r = 0
    for name, vols in groups.items():
        for vname, cut in views:
            for c in range(per_row):
                ax = axes[r, c]
                ax.axis("off")
                if c < len(vols):
                    ax.imshow(cut(to_ras(vols[c], affine)), cmap="gray", vmin=-1, vmax=1, interpolation="nearest")
                if c == 0:
                    ax.set_title(f"{name} ({vname})", fontsize=7, loc="left")
            r += 1
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)


def histogram_plot(groups: dict[str, list[dict]], path: Path) -> None:
    """Head-intensity histograms: each volume thin, the group's pooled histogram thick."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bins = np.linspace(-1.0, 1.2, 111)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for (name, rows), colour in zip(groups.items(), ("tab:blue", "tab:green", "tab:red")):
        for r in rows:
            h, _ = np.histogram(r["values"], bins=bins, density=True)
            ax.plot(bins[:-1], h, color=colour, alpha=0.15, lw=0.8)
        h, _ = np.histogram(np.concatenate([r["values"] for r in rows]), bins=bins, density=True)
        ax.plot(bins[:-1], h, color=colour, lw=2, label=f"{name} (n={len(rows)})")
    ax.set_xlabel("intensity inside the head (normalised units)")
    ax.set_ylabel("density")
    ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)


def denoising_profile(task, volumes: list[np.ndarray], timesteps: list[int], seed: int = 0) -> list[dict]:
    """x0 RMSE of the model at each timestep on real volumes, padded as training padded them (their minimum)."""
    x0 = torch.stack([pad_to_multiple(torch.from_numpy(v), task.required_multiple, value=float(v.min()))[0]
                      for v in volumes])[:, None]
    mean = x0.mean(dim=0, keepdim=True)
    g = torch.Generator().manual_seed(seed)
    rows = []
    for t in timesteps:
        tt = torch.full((x0.shape[0],), int(t), dtype=torch.long)
        noise = torch.randn(x0.shape, generator=g)
        x_t = task.process.add_noise(x0, noise, tt)
        with torch.no_grad():
            x0_hat = task.process.predict_x0(task.net(x_t, tt), x_t, tt)
        rows.append({"t": int(t), "x0_rmse": float(((x0_hat - x0) ** 2).mean().sqrt()),
                     "mean_volume_rmse": float(((mean - x0) ** 2).mean().sqrt())})
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True, help="IXI folder with t1/<case>.nii.gz")
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--eta", type=float, default=None, help="sampler stochasticity (default: the sampler's; DDIM 0)")
    ap.add_argument("--sampler", default=None, help="ddim | dpmsolver++ | ddpm (default: the checkpoint's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out-dir", required=True)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--profile-t", default="", help="comma-separated timesteps for the denoising profile (e.g. 10,200,500,800,950)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)

    task, ckpt = load_model(args.model, task="synthesis")
    cfg = ckpt["config"]
    factor = int(cfg["data"].get("downsample", 1))
    role = task.output_role
    stored = (ckpt.get("dataset_normalizers") or {}).get(role)
    norm = normalizer_from_dict(stored) if stored else None  # per-case scaling: samples stay normalised
    geo = ckpt["reference_geometry"]
    shape = tuple(geo["shape"])
    spacing = float(np.linalg.norm(np.asarray(geo["affine"])[:3, 0]))
    split = ckpt["split"]
    held = list(split.get("val", [])) + list(split.get("test", []))
    train_ids = list(split["train"])
    t1 = Path(args.data) / "t1"
    real_held = [real_volume(t1 / f"{c}.nii.gz", factor, ckpt, role, shape, geo["affine"]) for c in held]
    rng = np.random.default_rng(0)
    train_show = [train_ids[i] for i in sorted(rng.choice(len(train_ids), size=len(held), replace=False))]
    real_train_all = [real_volume(t1 / f"{c}.nii.gz", factor, ckpt, role, shape, geo["affine"]) for c in train_ids]
    real_train = [real_train_all[train_ids.index(c)] for c in train_show]

    pads = pad_spec(shape, task.required_multiple)
    padded = tuple(s + a + b for s, (a, b) in zip(shape, pads))
    profile = []
    if args.profile_t:
        profile = denoising_profile(task, real_held, [int(t) for t in args.profile_t.split(",") if t.strip()], args.seed)
        for r in profile:
            print(f"t={r['t']}: x0 RMSE {r['x0_rmse']:.3f} (mean held-out volume {r['mean_volume_rmse']:.3f})", flush=True)
    g = torch.Generator().manual_seed(args.seed)
    synth, t0 = [], time.perf_counter()
    with torch.no_grad():
        for i in range(args.samples):
            o = task.predict({}, steps=args.steps, generator=g, eta=args.eta, shape=(1, 1, *padded), sampler=args.sampler)
            v = crop_to(o["output"], pads)[0, 0].float().numpy()
            synth.append(v)
            save_volume(np.asarray(v if norm is None else norm.inverse(v), dtype=np.float32), out / f"sample_{i}.nii.gz",
                        affine=np.asarray(geo["affine"]))
    sec = (time.perf_counter() - t0) / max(args.samples, 1)

    label = f"IDM samples ({args.sampler or cfg['model']['process'].get('sampler', 'ddim')}, {args.steps} steps)"
    groups = {"real train": real_train, "real held-out": real_held, label: synth}
    montage({"real held-out": real_held[:8], "IDM samples": synth[:8]}, out / "montage.png", geo["affine"])
    stats = {k: describe(v, spacing) for k, v in groups.items()}
    pooled_train = np.concatenate([r["values"] for r in describe(real_train_all, spacing)])
    histogram_plot(stats, out / "histograms.png")
    summary = {}
    for name, rows in stats.items():
        vols = groups[name]
        w = [wasserstein_1d(r["values"], pooled_train) for r in rows]
        tm = np.array([r["tissue_means"] for r in rows])
        nn = nearest_rmse(vols, [v for c, v in zip(train_ids, real_train_all) if not any(v is x for x in vols)])
        summary[name] = {
            "n": len(rows),
            "head_litres": [float(np.mean([r["head_litres"] for r in rows])), float(np.std([r["head_litres"] for r in rows]))],
            "tissue_means": {"dark": [float(tm[:, 0].mean()), float(tm[:, 0].std())],
                             "middle": [float(tm[:, 1].mean()), float(tm[:, 1].std())],
                             "bright": [float(tm[:, 2].mean()), float(tm[:, 2].std())]},
            "w1_to_train": [float(np.mean(w)), float(np.std(w))],
            "pairwise_rmse": pairwise_rmse(vols),
            "nearest_train_rmse": [float(np.mean(nn)), float(np.min(nn))],
        }
    # Issue #15's targets: tissue-mean spread within 2x of the real held-out spread (every class), head-intensity
    # W1 to the real training pool within 3x of the real held-out volumes' W1 to it.
    real, syn = summary["real held-out"], summary[label]
    spread = {c: syn["tissue_means"][c][1] / max(real["tissue_means"][c][1], 1e-9) for c in ("dark", "middle", "bright")}
    w1_ratio = syn["w1_to_train"][0] / max(real["w1_to_train"][0], 1e-9)
    checks = {"tissue_spread_ratio": spread, "tissue_spread_ok": bool(max(spread.values()) <= 2.0),
              "w1_ratio": w1_ratio, "w1_ok": bool(w1_ratio <= 3.0)}
    result = {"model": str(args.model), "step": int(ckpt.get("step", -1)), "grid": list(shape), "spacing_mm": spacing,
              "steps": args.steps, "eta": args.eta, "sampler": args.sampler, "checks": checks, "denoising_profile": profile, "seconds_per_sample": sec, "threads": torch.get_num_threads(),
              "summary": summary}
    atomic_write_text(out / "synthesis_quality.json", json.dumps(result, indent=2))
    lines = [f"Model `{args.model}` (step {result['step']}), grid {shape} at {spacing:g} mm, "
             f"{args.steps} sampling steps ({args.sampler or 'checkpoint sampler'}, eta {args.eta}), {sec:.1f} s per sample on {torch.get_num_threads()} thread(s).",
             "",
             "| group | n | head (L) | dark mean | middle mean | bright mean | W1 to real train | pairwise RMSE | NN-train RMSE (mean / min) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, s in summary.items():
        t = s["tissue_means"]
        lines.append(f"| {name} | {s['n']} | {s['head_litres'][0]:.2f} ± {s['head_litres'][1]:.2f} | "
                     f"{t['dark'][0]:.3f} ± {t['dark'][1]:.3f} | {t['middle'][0]:.3f} ± {t['middle'][1]:.3f} | "
                     f"{t['bright'][0]:.3f} ± {t['bright'][1]:.3f} | {s['w1_to_train'][0]:.3f} ± {s['w1_to_train'][1]:.3f} | "
                     f"{s['pairwise_rmse']:.3f} | {s['nearest_train_rmse'][0]:.3f} / {s['nearest_train_rmse'][1]:.3f} |")
    lines += ["", "Checks against the real held-out volumes: tissue-mean spread ratio "
              + ", ".join(f"{c} {v:.2f}" for c, v in spread.items())
              + f" (target <= 2: {'met' if checks['tissue_spread_ok'] else 'NOT met'}); W1 ratio {w1_ratio:.2f}"
              + f" (target <= 3: {'met' if checks['w1_ok'] else 'NOT met'})."]
    atomic_write_text(out / "synthesis_quality.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
