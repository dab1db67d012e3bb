"""``voxdiff simulate-pet`` and ``simulate-pet-dataset``: paired low-/full-dose PET on real anatomy.

``--physics projection`` (default): sinograms, Poisson counts, thinned low doses and OSEM
(:mod:`voxdiff.sim.physics`); ``--physics image``: the older image-space simulation (white noise,
:mod:`voxdiff.sim.pet`), fast, for tests and quick runs. The commands parse options, check the path
plan and print; simulating and writing is :mod:`voxdiff.sim.dataset`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from voxdiff.cli.app import OVERWRITE_HELP, app, console, say
from voxdiff.errors import VoxdiffError
from voxdiff.io.atomic import case_name, full_suffix

PHYSICS = ("projection", "image")
PHYSICS_HELP = ("'projection' (sinograms, attenuation, scatter/randoms, Poisson counts, OSEM; see "
                "docs/pet-simulation.md) or 'image' (PSF + white Poisson noise per voxel, fast).")

SCHEME_HELP = "Label scheme: 'muse' (IXI DLMUSE regions) or 'brainweb' (BrainWeb tissue classes 0-9)."
HEAD_HELP = (
    "Head tissue outside the labelled brain: 'auto' (a mask from the subject's T1 in ../t1/ beside "
    "the labels when present, else 'labels'), 'labels' (labels dilated by 10 mm), 'none' (zero outside "
    "the brain), or the path of an anatomical image to threshold."
)


# --------------------------------------------------------------------------- options
def _common_options(fwhm: float | None, dose: float, counts: float | None, mean_counts: float, scheme: str,
                    physics: str) -> Any:
    """Check the options both physics share; returns the image-physics settings they give."""
    from voxdiff.sim.dataset import ImageSettings
    from voxdiff.sim.pet import SCHEMES

    if physics not in PHYSICS:
        raise VoxdiffError(f"unknown --physics '{physics}' (use {' or '.join(PHYSICS)})")
    if scheme not in SCHEMES:
        raise VoxdiffError(f"unknown --scheme '{scheme}' (use {' or '.join(SCHEMES)})")
    # The library's own check, run before any file is written or any loop starts.
    image = ImageSettings(fwhm_mm=5.0 if fwhm is None else fwhm, dose_fraction=dose, counts=counts,
                          mean_brain_counts=mean_counts)
    image.check()
    return image


def _floats(text: str, option: str) -> tuple[float, ...]:
    """Comma-separated numbers of an option, or one clear error naming it."""
    try:
        return tuple(float(v) for v in text.replace(" ", "").split(",") if v != "")
    except ValueError:
        raise VoxdiffError(f"{option} must be comma-separated numbers, got '{text}'") from None


def _settings(*, doses: str, nac_doses: str | None, complement_doses: str = "", prompts: float, fwhm: float | None,
              psf_recon: bool, iterations: int, subsets: int, views: int, oversample: int, background_fraction: float,
              post_filter_mm: float, lesions: int, lesion_diameters: str, lesion_contrast: str,
              lesion_free_fraction: float, device: str) -> Any:
    """The projection-physics settings of the options, checked."""
    from voxdiff.sim.physics import ProjectionSettings

    settings = ProjectionSettings(
        doses=_floats(doses, "--doses"), nac_doses=None if nac_doses is None else _floats(nac_doses, "--nac-doses"),
        complement_doses=_floats(complement_doses, "--complement-doses"), prompts=prompts,
        fwhm_mm=4.5 if fwhm is None else fwhm, psf_recon=psf_recon, iterations=iterations,
        subsets=subsets, n_views=views, oversample=oversample, background_fraction=background_fraction,
        post_filter_mm=post_filter_mm, lesions=lesions, lesion_diameters=_floats(lesion_diameters, "--lesion-diameters"),
        lesion_contrast=_floats(lesion_contrast, "--lesion-contrast"), lesion_free_fraction=lesion_free_fraction,
        device=device)
    settings.check()
    return settings


def _check_plan(label_files: list[Path], outputs: list[Path], *, head: str, scheme: str, tables: Path | None,
                labels_dir: Path | None = None, existing: str | None = None) -> None:
    """The path plan of a simulation (:func:`voxdiff.io.guard.check_path_plan`), before any work."""
    from voxdiff.io.guard import check_path_plan
    from voxdiff.sim.dataset import head_image_path

    heads = [h for h in (head_image_path(head, f, scheme) for f in label_files) if h is not None and h.exists()]
    option = "--labels-dir" if labels_dir is not None else "LABELS"
    check_path_plan({option: label_files, "--head": heads,
                     "--tables": sorted(tables.glob("*.csv")) if tables is not None and tables.is_dir() else None},
                    {"--out-dir": outputs}, input_folders={"--labels-dir": labels_dir} if labels_dir else None,
                    existing=existing)


class _CaseBar:
    """A rich progress bar over a dataset's subjects, as the library's ``progress(done, total, case)`` callback.

    It appears when the first subject starts and closes after the last, so the library's checks before
    the loop print nothing and the summary lines come after the bar.
    """

    COLUMNS = (TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[status]}"), TimeElapsedColumn(), TimeRemainingColumn())

    def __init__(self, description: str) -> None:
        self.description, self.bar, self.task = description, None, None

    def __call__(self, done: int, total: int, case: Any) -> None:
        if case is None:
            self.bar = Progress(*self.COLUMNS, console=console, transient=False)
            self.bar.start()
            self.task = self.bar.add_task(self.description, total=total, status="")  # status: escaped names
            return
        name = escape(case.case)
        if case.status == "skipped":
            status = f"{name}: complete, skipped"
        elif case.status == "failed":
            status = f"{name}: FAILED"
        elif "psnr_low_vs_full_db" in case.params:  # image physics
            status = f"{name}: {case.params['psnr_low_vs_full_db']:.1f} dB"
        else:
            status = f"{name}: {case.params['seconds']:.0f} s"
        self.bar.update(self.task, advance=1, status=status)
        if case.status == "failed":
            say(f"{case.case}: FAILED: {case.error}")
        if done == total:
            self.close()

    def close(self) -> None:
        """Stop the bar (idempotent)."""
        if self.bar is not None:
            self.bar.stop()
            self.bar = None

    def __enter__(self) -> _CaseBar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------- commands
_OPT = {
    "physics": lambda: typer.Option("projection", "--physics", help=PHYSICS_HELP),
    "fwhm": lambda: typer.Option(None, "--fwhm", help="System PSF FWHM in mm (default: 4.5 for projection, 5 for image)."),
    "doses": lambda: typer.Option("0.25,0.1,0.05,0.01", "--doses", help="[projection] Low-dose fractions (thinned from the full-dose counts)."),
    "nac_doses": lambda: typer.Option(None, "--nac-doses", help="[projection] Doses that also get a non-attenuation-corrected image (default: all; '' for none)."),
    "complement_doses": lambda: typer.Option("", "--complement-doses", help="[projection] Doses that also get comp_<tag>: the full-dose counts their thinning left out, reconstructed (independent of low_<tag>; a Noise2Noise training target). Default none."),
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
    complement_doses: str = _OPT["complement_doses"](),
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
    from voxdiff.sim.dataset import case_files, simulate_case_to_files

    image = _common_options(fwhm, dose, counts, mean_counts, scheme, physics)
    case = case or case_name(labels)
    start = time.perf_counter()
    settings = image if physics == "image" else _settings(
        doses=doses, nac_doses=nac_doses, complement_doses=complement_doses, prompts=prompts, fwhm=fwhm, psf_recon=psf_recon, iterations=iterations,
        subsets=subsets, views=views, oversample=oversample, background_fraction=background_fraction,
        post_filter_mm=post_filter_mm, lesions=lesions, lesion_diameters=lesion_diameters,
        lesion_contrast=lesion_contrast, lesion_free_fraction=lesion_free_fraction, device=device)
    _check_plan([labels], list(case_files(out_dir, case, settings).values()), head=head, scheme=scheme,
                tables=tables, existing=None if overwrite else "--overwrite")
    paths, params = simulate_case_to_files(labels, out_dir, settings=settings, case=case, seed=seed, scheme=scheme,
                                           head=head, tables=tables, overwrite=overwrite)
    if physics == "image":
        console.print(
            f"{escape(case)}: low-dose ({dose:g}) PSNR vs full-dose [bold]{params['psnr_low_vs_full_db']:.2f} dB[/] "
            f"(data range {params['psnr_data_range']:g}, mean {params['mean_brain_counts']:.0f} counts/brain voxel, "
            f"head: {escape(str(params['head_mask']))}) in {time.perf_counter() - start:.1f} s"
        )
        say(f"wrote {paths['full']}, {paths['low']}, {paths['json']}")
        return
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
    complement_doses: str = _OPT["complement_doses"](),
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
    from voxdiff.cases import resolve_part
    from voxdiff.data.manifest import SCAN_SUFFIXES
    from voxdiff.sim.dataset import build_pet_dataset, dataset_outputs

    image = _common_options(fwhm, dose, counts, mean_counts, scheme, physics)
    if head not in ("auto", "labels", "none"):
        raise VoxdiffError(f"--head must be auto, labels or none for a dataset, got '{head}'")
    if limit is not None and limit < 1:
        raise VoxdiffError(f"--limit must be >= 1, got {limit}")
    if not labels_dir.is_dir():
        raise VoxdiffError(f"{labels_dir}: label folder not found")
    files = sorted((p for p in labels_dir.iterdir()
                    if p.is_file() and not p.name.startswith(".") and full_suffix(p).lower() in SCAN_SUFFIXES),
                   key=case_name)
    if not files:
        raise VoxdiffError(f"{labels_dir}: no label maps ({', '.join(SCAN_SUFFIXES)})")
    files = files[:limit] if limit else files
    if physics == "image":
        if part_id is not None or num_parts is not None:
            raise VoxdiffError("--part-id/--num-parts need --physics projection")
        part, settings = None, image
    else:
        part = resolve_part(part_id, num_parts)
        settings = _settings(doses=doses, nac_doses=nac_doses, complement_doses=complement_doses, prompts=prompts, fwhm=fwhm, psf_recon=psf_recon,
                             iterations=iterations, subsets=subsets, views=views, oversample=oversample,
                             background_fraction=background_fraction, post_filter_mm=post_filter_mm, lesions=lesions,
                             lesion_diameters=lesion_diameters, lesion_contrast=lesion_contrast,
                             lesion_free_fraction=lesion_free_fraction, device=device)
    # Image physics replaces a whole earlier dataset, so it needs --overwrite; projection physics resumes
    # (the library refuses subjects of other settings without --overwrite).
    _check_plan(files, dataset_outputs(files, out_dir, settings), head=head, scheme=scheme, tables=tables,
                labels_dir=labels_dir, existing="--overwrite" if physics == "image" and not overwrite else None)
    where = f"part {part.index}/{part.count}: " if part is not None and part.count > 1 else ""
    with _CaseBar(f"{where}simulating PET") as bar:
        report = build_pet_dataset(files, out_dir, settings=settings, seed=seed, scheme=scheme, head=head,
                                   tables=tables, part=part, overwrite=overwrite, labels_dir=labels_dir, progress=bar)
    n, elapsed = len(report.cases), report.seconds
    if physics == "image":
        psnr = report.summary["psnr_low_vs_full_db"]
        say(f"{n} subject(s) in {elapsed:.1f} s ({elapsed / n:.2f} s each); low-dose PSNR "
            f"{psnr['mean']:.2f} ± {psnr['std']:.2f} dB; manifest {report.manifest}")
        return
    say(f"{where}{len(report.with_status('built'))} simulated, {len(report.with_status('skipped'))} skipped "
        f"(complete), {len(report.with_status('failed'))} failed of {n} subject(s) in {elapsed:.1f} s")
    if part.count > 1 and report.missing:
        say(f"manifest not written yet: {len(report.missing)} subject(s) not complete (other parts may still run; "
            f"a run without --part-id after them writes it)")
    elif report.manifest is not None:
        say(f"manifest {report.manifest}: {report.summary['cases']} subject(s)")
    report.raise_for_failures()
