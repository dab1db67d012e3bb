"""``voxdiff simulate-pet`` and ``simulate-pet-dataset``: paired low-/full-dose PET on real anatomy.

``--physics projection`` (default): sinograms, Poisson counts, thinned low doses and OSEM
(:mod:`voxdiff.sim.physics`); ``--physics image``: the older image-space simulation (white noise,
:mod:`voxdiff.sim.pet`), fast, for tests and quick runs.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from rich.markup import escape

from voxdiff.cli.app import OVERWRITE_HELP, app, console, say
from voxdiff.errors import VoxdiffError
from voxdiff.io import Volume, atomic_write_text, check_same_geometry, load_volume, save_volume
from voxdiff.io.atomic import full_suffix, staged_outputs

PHYSICS = ("projection", "image")
PHYSICS_HELP = ("'projection' (sinograms, attenuation, scatter/randoms, Poisson counts, OSEM; see "
                "docs/pet-simulation.md) or 'image' (PSF + white Poisson noise per voxel, fast).")

SCHEME_HELP = "Label scheme: 'muse' (IXI DLMUSE regions) or 'brainweb' (BrainWeb tissue classes 0-9)."
HEAD_HELP = (
    "Head tissue outside the labelled brain: 'auto' (a mask from the subject's T1 in ../t1/ beside "
    "the labels when present, else 'labels'), 'labels' (labels dilated by 10 mm), 'none' (zero outside "
    "the brain), or the path of an anatomical image to threshold."
)


def _case_id(path: Path) -> str:
    suffix = full_suffix(path)
    return path.name[: -len(suffix)] if suffix else path.name


def _validate(fwhm: float, dose: float, counts: float | None, mean_counts: float, scheme: str) -> None:
    from voxdiff.sim.pet import SCHEMES, check_settings

    if scheme not in SCHEMES:
        raise VoxdiffError(f"unknown --scheme '{scheme}' (use {' or '.join(SCHEMES)})")
    # The library's own check, run before any file is written or any loop starts.
    check_settings(fwhm, dose, counts, mean_counts)


def _head_mask(head: str, labels: Volume, scheme: str) -> tuple[np.ndarray | None, float, str]:
    """(mask or None, margin for the library default, description) for a --head choice."""
    from voxdiff.sim.pet import head_mask_from_image

    if scheme == "brainweb" or head == "none":
        return None, 0.0, "none"
    if head == "labels":
        return None, 10.0, "labels"
    if head == "auto":
        assert labels.path is not None
        t1 = labels.path.parent.parent / "t1" / labels.path.name
        if not t1.is_file():
            return None, 10.0, "labels"
        image_path = t1
    else:
        image_path = Path(head)
    image = load_volume(image_path, role="head image")
    check_same_geometry(labels, image, what="--head image")
    return head_mask_from_image(image, labels.array > 0), 0.0, str(image_path.resolve())


def _simulate_one(label_path: Path, *, case: str, scheme: str, fwhm: float, dose: float, counts: float | None,
                  mean_counts: float, seed: int, head: str, tables: Path | None) -> tuple[Any, dict[str, Any]]:
    from voxdiff.sim.pet import case_seed, simulate_pet

    labels = load_volume(label_path, role="labels")
    mask, margin, head_source = _head_mask(head, labels, scheme)
    try:
        result = simulate_pet(labels, scheme=scheme, fwhm_mm=fwhm, dose_fraction=dose, counts=counts,
                              mean_brain_counts=mean_counts, seed=case_seed(seed, case), head_mask=mask,
                              head_margin_mm=margin, tables_dir=tables)
    except VoxdiffError as exc:
        # Name the file: the simulation itself only sees arrays.
        if str(label_path) in str(exc):
            raise
        raise VoxdiffError(f"{label_path}: {exc}") from exc
    params = {"case": case, "labels": str(label_path.resolve()), "seed_base": seed, **result.params}
    if head_source not in ("none", "labels"):
        params["head_mask"] = f"thresholded {head_source}"
    return result, params


def _image_paths(out_dir: Path, case: str) -> dict[str, Path]:
    """Every output file of one case of the image-physics simulation."""
    return {"full": out_dir / f"{case}_full.nii.gz", "low": out_dir / f"{case}_low.nii.gz",
            "json": out_dir / f"{case}_pet.json"}


def _write_case(result: Any, params: dict[str, Any], out_dir: Path, case: str, stage: Any) -> dict[str, Path]:
    """Stage one case's files in ``stage`` (a :func:`~voxdiff.io.atomic.staged_outputs` transaction)."""
    paths = _image_paths(out_dir, case)
    save_volume(result.full, stage.path(paths["full"]))
    save_volume(result.low, stage.path(paths["low"]))
    atomic_write_text(stage.path(paths["json"]), json.dumps(params, indent=2) + "\n")
    return paths




# --------------------------------------------------------------------------- projection physics
def _floats(text: str, option: str) -> tuple[float, ...]:
    """Comma-separated numbers of an option, or one clear error naming it."""
    try:
        return tuple(float(v) for v in text.replace(" ", "").split(",") if v != "")
    except ValueError:
        raise VoxdiffError(f"{option} must be comma-separated numbers, got '{text}'") from None


def _settings(*, doses: str, nac_doses: str | None, prompts: float, fwhm: float | None, psf_recon: bool,
              iterations: int, subsets: int, views: int, oversample: int, background_fraction: float,
              post_filter_mm: float, lesions: int, lesion_diameters: str, lesion_contrast: str,
              lesion_free_fraction: float, device: str) -> Any:
    from voxdiff.sim.physics import ProjectionSettings

    settings = ProjectionSettings(
        doses=_floats(doses, "--doses"), nac_doses=None if nac_doses is None else _floats(nac_doses, "--nac-doses"),
        prompts=prompts, fwhm_mm=4.5 if fwhm is None else fwhm, psf_recon=psf_recon, iterations=iterations,
        subsets=subsets, n_views=views, oversample=oversample, background_fraction=background_fraction,
        post_filter_mm=post_filter_mm, lesions=lesions, lesion_diameters=_floats(lesion_diameters, "--lesion-diameters"),
        lesion_contrast=_floats(lesion_contrast, "--lesion-contrast"), lesion_free_fraction=lesion_free_fraction,
        device=device)
    settings.check()
    return settings


def _t1_for(head: str, labels: Volume, scheme: str) -> Volume | None:
    """The anatomical image a --head choice names (the T1 in ../t1/ for 'auto'), or None."""
    if scheme == "brainweb" or head in ("none", "labels"):
        return None
    if head == "auto":
        assert labels.path is not None
        path = labels.path.parent.parent / "t1" / labels.path.name
        if not path.is_file():
            return None
    else:
        path = Path(head)
    image = load_volume(path, role="head image")
    check_same_geometry(labels, image, what="--head image")
    return image


def _projection_paths(out_dir: Path, case: str, settings: Any) -> dict[str, Path]:
    """Every output file of one case: image roles, then ``lesions_json`` and ``json``."""
    from voxdiff.sim.physics import projection_roles

    paths = {role: out_dir / f"{case}_{role}.nii.gz" for role in projection_roles(settings)}
    paths["lesions_json"] = out_dir / f"{case}_lesions.json"
    paths["json"] = out_dir / f"{case}_pet.json"
    return paths


def _simulate_projection_case(label_path: Path, *, case: str, seed: int, settings: Any, scheme: str, head: str,
                              tables: Path | None, out_dir: Path) -> tuple[dict[str, Path], dict[str, Any]]:
    """Simulate one case and write all its files, or none of them (the error names the label map)."""
    from voxdiff.sim.physics import simulate_projection_pet

    labels = load_volume(label_path, role="labels")
    t1 = _t1_for(head, labels, scheme)
    try:
        result = simulate_projection_pet(labels, case=case, seed=seed, settings=settings, scheme=scheme, t1=t1,
                                         head_mask=None if head != "none" or scheme != "muse" else labels.array > 0,
                                         tables_dir=tables)
    except VoxdiffError as exc:
        if str(label_path) in str(exc):
            raise
        raise VoxdiffError(f"{label_path}: {exc}") from exc
    params = {**result.params, "labels": str(label_path.resolve()),
              "t1": str(t1.path.resolve()) if t1 is not None and t1.path is not None else None}
    paths = _projection_paths(out_dir, case, settings)
    with staged_outputs(out_dir) as stage:
        for role, vol in result.images.items():
            save_volume(vol, stage.path(paths[role]), dtype=np.uint16 if role == "lesions" else np.float32)
        atomic_write_text(stage.path(paths["lesions_json"]), json.dumps(result.lesions, indent=2) + "\n")
        # The parameters last: a case with its JSON has every file.
        atomic_write_text(stage.path(paths["json"]), json.dumps(params, indent=2) + "\n")
    return paths, params


def _head_input(head: str, labels: Path, scheme: str) -> Path | None:
    """The anatomical image a --head choice reads, if any (for the path plan; nothing is loaded)."""
    if scheme == "brainweb" or head in ("none", "labels"):
        return None
    return labels.parent.parent / "t1" / labels.name if head == "auto" else Path(head)


def _check_plan(label_files: list[Path], outputs: list[Path], *, head: str, scheme: str, tables: Path | None,
                labels_dir: Path | None = None, existing: str | None = None) -> None:
    """The path plan of a simulation (:func:`voxdiff.io.guard.check_path_plan`), before any work."""
    from voxdiff.io.guard import check_path_plan

    heads = [h for h in (_head_input(head, f, scheme) for f in label_files) if h is not None and h.exists()]
    option = "--labels-dir" if labels_dir is not None else "LABELS"
    check_path_plan({option: label_files, "--head": heads,
                     "--tables": sorted(tables.glob("*.csv")) if tables is not None and tables.is_dir() else None},
                    {"--out-dir": outputs}, input_folders={"--labels-dir": labels_dir} if labels_dir else None,
                    existing=existing)


def _settings_record(settings: Any) -> dict[str, Any]:
    from dataclasses import asdict

    return json.loads(json.dumps({k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(settings).items()}))


def _complete_case(paths: dict[str, Path], shape: tuple[int, ...], settings: Any, seed: int) -> dict[str, Any] | None:
    """The case's parameters if all its files exist, every volume reads with ``shape`` and the
    settings and seed match this run's; else None (the case is simulated again)."""
    try:
        params = json.loads(paths["json"].read_text())
        json.loads(paths["lesions_json"].read_text())
        if params.get("settings") != _settings_record(settings) or params.get("seed_base") != seed:
            return None
        for role, path in paths.items():
            if role not in ("json", "lesions_json") and load_volume(path).shape != shape:
                return None
    except (OSError, ValueError, VoxdiffError):
        return None
    return params


def _other_settings(json_path: Path, settings: Any, seed: int) -> bool:
    """Whether a case's parameter file records other settings or seed than this run's (an earlier result
    that re-simulating would replace); False when there is none or it is unreadable (an incomplete case)."""
    try:
        params = json.loads(json_path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(params, dict) and (params.get("settings") != _settings_record(settings)
                                         or params.get("seed_base") != seed)


def _manifest_roles(settings: Any) -> tuple[str, list[str]]:
    """(the role named ``source``, the other image roles in manifest order)."""
    from voxdiff.sim.physics import dose_tag, projection_roles

    tags = [dose_tag(d) for d in settings.doses]
    source = "low_5" if "5" in tags else f"low_{tags[0]}"
    return source, [r for r in projection_roles(settings) if r != "full"]


def _common_options(fwhm: float | None, dose: float, counts: float | None, mean_counts: float, scheme: str,
                    physics: str) -> None:
    if physics not in PHYSICS:
        raise VoxdiffError(f"unknown --physics '{physics}' (use {' or '.join(PHYSICS)})")
    _validate(5.0 if fwhm is None else fwhm, dose, counts, mean_counts, scheme)


# --------------------------------------------------------------------------- commands
_OPT = {
    "physics": lambda: typer.Option("projection", "--physics", help=PHYSICS_HELP),
    "fwhm": lambda: typer.Option(None, "--fwhm", help="System PSF FWHM in mm (default: 4.5 for projection, 5 for image)."),
    "doses": lambda: typer.Option("0.25,0.1,0.05,0.01", "--doses", help="[projection] Low-dose fractions (thinned from the full-dose counts)."),
    "nac_doses": lambda: typer.Option(None, "--nac-doses", help="[projection] Doses that also get a non-attenuation-corrected image (default: all; '' for none)."),
    "prompts": lambda: typer.Option(1e8, "--prompts", help="[projection] Expected full-dose prompts per subject, all planes (10-20 min brain FDG, docs/pet-simulation.md)."),
    "iterations": lambda: typer.Option(3, "--iterations", help="[projection] OSEM iterations."),
    "subsets": lambda: typer.Option(21, "--subsets", help="[projection] OSEM subsets (divides --views best)."),
    "views": lambda: typer.Option(168, "--views", help="[projection] Sinogram views over 180 degrees."),
    "oversample": lambda: typer.Option(2, "--oversample", help="[projection] In-plane oversampling of the data simulation (1 = same grid as the reconstruction)."),
    "psf_recon": lambda: typer.Option(False, "--psf-recon/--no-psf-recon", help="[projection] Model the PSF in OSEM."),
    "post_filter": lambda: typer.Option(0.0, "--post-filter-mm", help="[projection] Gaussian post-filter FWHM in mm (0 = off)."),
    "background": lambda: typer.Option(0.3, "--background-fraction", help="[projection] Scatter + randoms share of the prompts."),
    "lesions": lambda: typer.Option(4, "--lesions", help="[projection] Spherical lesions per lesioned subject."),
    "lesion_diameters": lambda: typer.Option("4,8,12,16", "--lesion-diameters", help="[projection] Lesion diameters in mm (cycled)."),
    "lesion_contrast": lambda: typer.Option("1.5,6", "--lesion-contrast", help="[projection] Lesion/background activity ratio: a range LOW,HIGH or one value."),
    "lesion_free": lambda: typer.Option(0.3, "--lesion-free-fraction", help="[projection] Share of subjects without lesions (seeded per case)."),
    "device": lambda: typer.Option("cpu", "--device", help="[projection] torch device: cpu or cuda."),
}


@app.command("simulate-pet")
def simulate_pet_command(
    labels: Path = typer.Argument(..., help="Integer label map (.nii.gz, .mha, .nrrd, .hv)."),
    out_dir: Path = typer.Option(..., "--out-dir", "-o", help="Output folder (created if missing)."),
    physics: str = _OPT["physics"](),
    fwhm: float | None = _OPT["fwhm"](),
    dose: float = typer.Option(0.05, "--dose", help="[image] Low-dose fraction of the full-dose counts, in (0, 1]."),
    counts: float | None = typer.Option(None, "--counts", help="[image] Total expected full-dose counts (default: from --mean-counts)."),
    mean_counts: float = typer.Option(200.0, "--mean-counts", help="[image] Mean expected full-dose counts per brain voxel."),
    doses: str = _OPT["doses"](),
    nac_doses: str | None = _OPT["nac_doses"](),
    prompts: float = _OPT["prompts"](),
    iterations: int = _OPT["iterations"](),
    subsets: int = _OPT["subsets"](),
    views: int = _OPT["views"](),
    oversample: int = _OPT["oversample"](),
    psf_recon: bool = _OPT["psf_recon"](),
    post_filter_mm: float = _OPT["post_filter"](),
    background_fraction: float = _OPT["background"](),
    lesions: int = _OPT["lesions"](),
    lesion_diameters: str = _OPT["lesion_diameters"](),
    lesion_contrast: str = _OPT["lesion_contrast"](),
    lesion_free_fraction: float = _OPT["lesion_free"](),
    device: str = _OPT["device"](),
    seed: int = typer.Option(0, "--seed", help="Seed; the subject's draws use (seed, CRC32 of the case id)."),
    scheme: str = typer.Option("muse", "--scheme", help=SCHEME_HELP),
    head: str = typer.Option("auto", "--head", help=HEAD_HELP),
    case: str | None = typer.Option(None, "--case", help="Case id for the output names (default: the file name)."),
    tables: Path | None = typer.Option(None, "--tables", help="Folder of the MUSE region CSVs (default: found beside the labels)."),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
) -> None:
    """Simulate PET of one subject from its label map.

    projection (default): CASE_full, CASE_low_<tag> (tag = dose in %: 25, 10, 5, 1), CASE_nac_low_<tag>, CASE_truth
    (OSEM of the noise-free data), CASE_activity, CASE_mumap (1/cm), CASE_lesions (ids) .nii.gz, CASE_lesions.json and
    CASE_pet.json; images in kBq/ml-like units, low doses rescaled to the full-dose scale.
    image: CASE_full.nii.gz, CASE_low.nii.gz (full-dose counts per voxel) and CASE_pet.json.

    Example: [cyan]voxdiff simulate-pet ../shared/data/ixi-t1-2mm/labels/IXI012-HH-1211.nii.gz --out-dir pet/[/]
    """
    _common_options(fwhm, dose, counts, mean_counts, scheme, physics)
    case = case or _case_id(labels)
    start = time.perf_counter()
    existing = None if overwrite else "--overwrite"
    if physics == "image":
        _check_plan([labels], list(_image_paths(out_dir, case).values()), head=head, scheme=scheme, tables=tables,
                    existing=existing)
        result, params = _simulate_one(labels, case=case, scheme=scheme, fwhm=5.0 if fwhm is None else fwhm, dose=dose,
                                       counts=counts, mean_counts=mean_counts, seed=seed, head=head, tables=tables)
        with staged_outputs(out_dir) as stage:
            paths = _write_case(result, params, out_dir, case, stage)
        console.print(
            f"{escape(case)}: low-dose ({dose:g}) PSNR vs full-dose [bold]{params['psnr_low_vs_full_db']:.2f} dB[/] "
            f"(data range {params['psnr_data_range']:g}, mean {params['mean_brain_counts']:.0f} counts/brain voxel, "
            f"head: {escape(str(params['head_mask']))}) in {time.perf_counter() - start:.1f} s"
        )
        say(f"wrote {paths['full']}, {paths['low']}, {paths['json']}")
        return
    settings = _settings(doses=doses, nac_doses=nac_doses, prompts=prompts, fwhm=fwhm, psf_recon=psf_recon,
                         iterations=iterations, subsets=subsets, views=views, oversample=oversample,
                         background_fraction=background_fraction, post_filter_mm=post_filter_mm, lesions=lesions,
                         lesion_diameters=lesion_diameters, lesion_contrast=lesion_contrast,
                         lesion_free_fraction=lesion_free_fraction, device=device)
    _check_plan([labels], list(_projection_paths(out_dir, case, settings).values()), head=head, scheme=scheme,
                tables=tables, existing=existing)
    paths, params = _simulate_projection_case(labels, case=case, seed=seed, settings=settings, scheme=scheme,
                                              head=head, tables=tables, out_dir=out_dir)
    counts_text = ", ".join(f"{k}%: {v['prompts']:.3g}" for k, v in params["counts"].items())
    say(f"{case}: prompts {counts_text}; {params['lesions']} lesion(s); {time.perf_counter() - start:.1f} s")
    say(f"wrote {len(paths)} files to {out_dir} ({case}_*.nii.gz, {case}_lesions.json, {case}_pet.json)")


@app.command("simulate-pet-dataset")
def simulate_pet_dataset_command(
    labels_dir: Path = typer.Option(..., "--labels-dir", help="Folder of label maps (one subject per file)."),
    out_dir: Path = typer.Option(..., "--out-dir", "-o", help="Output folder (created if missing)."),
    physics: str = _OPT["physics"](),
    fwhm: float | None = _OPT["fwhm"](),
    dose: float = typer.Option(0.05, "--dose", help="[image] Low-dose fraction of the full-dose counts, in (0, 1]."),
    counts: float | None = typer.Option(None, "--counts", help="[image] Total expected full-dose counts per subject (default: from --mean-counts)."),
    mean_counts: float = typer.Option(200.0, "--mean-counts", help="[image] Mean expected full-dose counts per brain voxel."),
    doses: str = _OPT["doses"](),
    nac_doses: str | None = _OPT["nac_doses"](),
    prompts: float = _OPT["prompts"](),
    iterations: int = _OPT["iterations"](),
    subsets: int = _OPT["subsets"](),
    views: int = _OPT["views"](),
    oversample: int = _OPT["oversample"](),
    psf_recon: bool = _OPT["psf_recon"](),
    post_filter_mm: float = _OPT["post_filter"](),
    background_fraction: float = _OPT["background"](),
    lesions: int = _OPT["lesions"](),
    lesion_diameters: str = _OPT["lesion_diameters"](),
    lesion_contrast: str = _OPT["lesion_contrast"](),
    lesion_free_fraction: float = _OPT["lesion_free"](),
    device: str = _OPT["device"](),
    seed: int = typer.Option(0, "--seed", help="Seed; each subject uses (seed, CRC32 of its id), whatever --limit or part."),
    scheme: str = typer.Option("muse", "--scheme", help=SCHEME_HELP),
    head: str = typer.Option("auto", "--head", help="'auto', 'labels' or 'none' (see simulate-pet --help)."),
    limit: int | None = typer.Option(None, "--limit", help="Only the first N subjects (sorted by id)."),
    part_id: int | None = typer.Option(None, "--part-id", help="[projection] This process's part (0-based), round-robin on sorted case ids."),
    num_parts: int | None = typer.Option(None, "--num-parts", help="[projection] Number of parts the subjects are split into."),
    tables: Path | None = typer.Option(None, "--tables", help="Folder of the MUSE region CSVs (default: found beside the labels)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Simulate again subjects whose files were made with other settings (projection), or replace an earlier dataset (image)."),
) -> None:
    """Build a PET dataset from a folder of label maps.

    projection (default): each subject's files as simulate-pet writes them, all or nothing per subject; subjects whose
    files are all present, readable, of the right shape and made with the same settings are skipped; a failing subject
    is reported by name at the end (exit 2) and the others are kept. manifest.csv (case, source = low_5, target = full,
    one column per role, label) and dataset.json are written by the run that finds every subject complete (a plain run
    after all --part-id/--num-parts runs writes them too), or by a single-process run listing the completed subjects.
    image: CASE_full/CASE_low.nii.gz + CASE_pet.json per subject, manifest.csv (source = low, target = full), all or nothing.
    Existing files of other settings (projection) or an earlier dataset (image) are replaced only with --overwrite; a
    failure leaves every earlier file as it was.

    Example: [cyan]voxdiff simulate-pet-dataset --labels-dir ../shared/data/ixi-t1-2mm/labels --out-dir ../data/pet-proj --limit 20[/]
    """
    from voxdiff.data.manifest import SCAN_SUFFIXES

    _common_options(fwhm, dose, counts, mean_counts, scheme, physics)
    if head not in ("auto", "labels", "none"):
        raise VoxdiffError(f"--head must be auto, labels or none for a dataset, got '{head}'")
    if limit is not None and limit < 1:
        raise VoxdiffError(f"--limit must be >= 1, got {limit}")
    if not labels_dir.is_dir():
        raise VoxdiffError(f"{labels_dir}: label folder not found")
    files = sorted((p for p in labels_dir.iterdir()
                    if p.is_file() and not p.name.startswith(".") and full_suffix(p).lower() in SCAN_SUFFIXES),
                   key=_case_id)
    if not files:
        raise VoxdiffError(f"{labels_dir}: no label maps ({', '.join(SCAN_SUFFIXES)})")
    files = files[:limit] if limit else files
    if physics == "image":
        if part_id is not None or num_parts is not None:
            raise VoxdiffError("--part-id/--num-parts need --physics projection")
        _check_plan(files, [p for f in files for p in _image_paths(out_dir, _case_id(f)).values()]
                    + [out_dir / "manifest.csv", out_dir / "dataset.json"], head=head, scheme=scheme, tables=tables,
                    labels_dir=labels_dir, existing=None if overwrite else "--overwrite")
        _image_dataset(files, labels_dir=labels_dir, out_dir=out_dir, fwhm=5.0 if fwhm is None else fwhm, dose=dose,
                       counts=counts, mean_counts=mean_counts, seed=seed, scheme=scheme, head=head, tables=tables)
        return
    from voxdiff.cases import resolve_part

    part = resolve_part(part_id, num_parts)
    settings = _settings(doses=doses, nac_doses=nac_doses, prompts=prompts, fwhm=fwhm, psf_recon=psf_recon,
                         iterations=iterations, subsets=subsets, views=views, oversample=oversample,
                         background_fraction=background_fraction, post_filter_mm=post_filter_mm, lesions=lesions,
                         lesion_diameters=lesion_diameters, lesion_contrast=lesion_contrast,
                         lesion_free_fraction=lesion_free_fraction, device=device)
    _check_plan(files, [p for f in files for p in _projection_paths(out_dir, _case_id(f), settings).values()]
                + [out_dir / "manifest.csv", out_dir / "dataset.json"], head=head, scheme=scheme, tables=tables,
                labels_dir=labels_dir)
    if not overwrite:
        for f in files:
            json_path = _projection_paths(out_dir, _case_id(f), settings)["json"]
            if _other_settings(json_path, settings, seed):
                raise VoxdiffError(f"{json_path}: subject {_case_id(f)} was simulated with other settings or another "
                                   "--seed; pass --overwrite to simulate it again, or choose another --out-dir")
    _projection_dataset(files, part=part, settings=settings, labels_dir=labels_dir, out_dir=out_dir, seed=seed,
                        scheme=scheme, head=head, tables=tables)


def _projection_dataset(files: list[Path], *, part: Any, settings: Any, labels_dir: Path, out_dir: Path, seed: int,
                        scheme: str, head: str, tables: Path | None) -> None:
    """The projection-physics dataset builder of ``simulate-pet-dataset`` (see its help)."""
    from voxdiff.data.manifest import Case, write_manifest
    from voxdiff.io.atomic import ensure_out_dir

    ensure_out_dir(out_dir)
    mine = part.select(files)
    done: dict[str, dict[str, Any]] = {}
    skipped: list[str] = []
    failed: dict[str, str] = {}
    start = time.perf_counter()
    where = f"part {part.index}/{part.count}: " if part.count > 1 else ""
    columns = (TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[status]}"), TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(f"{where}simulating PET", total=len(mine), status="")  # status: escaped names
        for path in mine:
            case = _case_id(path)
            paths = _projection_paths(out_dir, case, settings)
            shape = load_volume(path, role="labels").shape if paths["json"].exists() else None
            if shape is not None and _complete_case(paths, shape, settings, seed) is not None:
                skipped.append(case)
                progress.update(task, advance=1, status=f"{escape(case)}: complete, skipped")
                continue
            try:
                _, params = _simulate_projection_case(path, case=case, seed=seed, settings=settings, scheme=scheme,
                                                      head=head, tables=tables, out_dir=out_dir)
            except VoxdiffError as exc:
                failed[case] = " ".join(str(exc).split())
                progress.update(task, advance=1, status=f"{escape(case)}: FAILED")
                say(f"{case}: FAILED: {failed[case]}")
                continue
            done[case] = params
            progress.update(task, advance=1, status=f"{escape(case)}: {params['seconds']:.0f} s")
    elapsed = time.perf_counter() - start
    say(f"{where}{len(done)} simulated, {len(skipped)} skipped (complete), {len(failed)} failed of "
        f"{len(mine)} subject(s) in {elapsed:.1f} s")

    # The manifest lists every complete subject (all parts); a part run writes it only when none is missing.
    source, roles = _manifest_roles(settings)
    complete: list[tuple[Path, str, dict[str, Path]]] = []
    missing: list[str] = []
    for path in files:
        case = _case_id(path)
        paths = _projection_paths(out_dir, case, settings)
        ok = case in done or case in skipped or (
            case not in failed and paths["json"].exists()
            and _complete_case(paths, load_volume(path, role="labels").shape, settings, seed) is not None)
        if ok:
            complete.append((path, case, paths))
        else:
            missing.append(case)
    if part.count > 1 and missing:
        say(f"manifest not written yet: {len(missing)} subject(s) not complete (other parts may still run; "
            f"a run without --part-id after them writes it)")
    elif complete:
        cases = [Case(case, {"source": paths[source], "target": paths["full"],
                             **{r: paths[r] for r in roles}, "label": path}) for path, case, paths in complete]
        manifest = out_dir / "manifest.csv"
        summary = {"physics": "projection", "cases": len(cases), "labels_dir": str(labels_dir.resolve()),
                   "scheme": scheme, "seed": seed, "head": head, "settings": _settings_record(settings),
                   "missing": missing, "roles": {"source": source, "target": "full", "label": "region labels"},
                   "seconds_this_run": round(elapsed, 1)}
        with staged_outputs() as stage:  # the manifest and its description together
            write_manifest(cases, stage.path(manifest), base=out_dir)
            atomic_write_text(stage.path(out_dir / "dataset.json"), json.dumps(summary, indent=2) + "\n")
        say(f"manifest {manifest}: {len(cases)} subject(s)")
    if failed:
        names = "; ".join(f"{k}: {v}" for k, v in failed.items())
        raise VoxdiffError(f"{len(failed)} of {len(mine)} subject(s) failed (the others are kept): {names}")


# --------------------------------------------------------------------------- image physics
def _image_dataset(files: list[Path], *, labels_dir: Path, out_dir: Path, fwhm: float, dose: float,
                   counts: float | None, mean_counts: float, seed: int, scheme: str, head: str,
                   tables: Path | None) -> None:
    """The image-physics dataset builder (unchanged behaviour: all or nothing over the dataset)."""
    from voxdiff.data.manifest import Case, write_manifest

    cases: list[Case] = []
    psnrs: list[float] = []
    start = time.perf_counter()
    columns = (TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[status]}"), TimeElapsedColumn(), TimeRemainingColumn())
    # One transaction over the dataset: a bad label map (or a full disk) leaves no dataset that looks
    # complete, and an earlier dataset in ``out_dir`` byte-identical.
    with staged_outputs(out_dir) as stage:
        with Progress(*columns, console=console, transient=False) as progress:
            task = progress.add_task("simulating PET", total=len(files), status="")
            for path in files:
                case = _case_id(path)
                result, params = _simulate_one(path, case=case, scheme=scheme, fwhm=fwhm, dose=dose, counts=counts,
                                               mean_counts=mean_counts, seed=seed, head=head, tables=tables)
                paths = _write_case(result, params, out_dir, case, stage)
                cases.append(Case(case, {"source": paths["low"], "target": paths["full"], "label": path}))
                psnrs.append(params["psnr_low_vs_full_db"])
                progress.update(task, advance=1, status=f"{escape(case)}: {psnrs[-1]:.1f} dB")
        elapsed = time.perf_counter() - start
        summary = {
            "cases": len(cases), "labels_dir": str(labels_dir.resolve()), "scheme": scheme, "fwhm_mm": fwhm,
            "dose_fraction": dose, "counts": counts, "mean_brain_counts": mean_counts, "seed": seed, "head": head,
            "psnr_low_vs_full_db": {"mean": float(np.mean(psnrs)), "std": float(np.std(psnrs)),
                                    "min": float(np.min(psnrs)), "max": float(np.max(psnrs))},
            "seconds": round(elapsed, 1),
            "roles": {"source": "low-dose", "target": "full-dose", "label": "region labels"},
        }
        atomic_write_text(stage.path(out_dir / "dataset.json"), json.dumps(summary, indent=2) + "\n")
        manifest = out_dir / "manifest.csv"
        write_manifest(cases, stage.path(manifest), base=out_dir)
    say(f"{len(cases)} subject(s) in {elapsed:.1f} s ({elapsed / len(cases):.2f} s each); low-dose PSNR "
        f"{summary['psnr_low_vs_full_db']['mean']:.2f} ± {summary['psnr_low_vs_full_db']['std']:.2f} dB; "
        f"manifest {manifest}")
