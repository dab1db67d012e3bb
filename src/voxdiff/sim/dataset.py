"""Simulated PET cases and datasets on disk: what ``voxdiff simulate-pet(-dataset)`` writes, callable from Python.

:func:`simulate_case_to_files` simulates one subject from its label map and writes every file of
the case, or none of them; :func:`build_pet_dataset` does it for a list of label maps and writes
``manifest.csv`` + ``dataset.json``. The physics is chosen by the settings' type:

* :class:`~voxdiff.sim.physics.ProjectionSettings`: sinograms, Poisson counts, thinned low doses,
  OSEM (:func:`voxdiff.sim.physics.simulate_projection_pet`). A dataset is resumable and
  part-split: a subject whose files are all present, readable, of the label map's shape and made
  with the same settings and seed is skipped; a failing subject is reported and the others are
  kept; ``part`` (:class:`voxdiff.cases.Part`) runs a round-robin share of the sorted case ids.
* :class:`ImageSettings`: the image-space simulation (:func:`voxdiff.sim.pet.simulate_pet`, white
  noise, fast); a dataset is written all or nothing.

``head`` is where head tissue outside the labelled brain comes from: ``"auto"`` (a mask from the
subject's T1 in ``../t1/`` beside the labels when present, else ``"labels"``), ``"labels"`` (the
labels dilated by 10 mm), ``"none"``, or the path of an anatomical image to threshold. Nothing
here prints: progress goes to an optional callback, errors are :class:`~voxdiff.errors.VoxdiffError`.

Example::

    from voxdiff.sim import ProjectionSettings, build_pet_dataset
    report = build_pet_dataset(sorted(Path("labels").glob("*.nii.gz")), Path("pet"),
                               settings=ProjectionSettings(doses=(0.25, 0.05)), seed=0)
    report.raise_for_failures()   # or inspect report.cases
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from voxdiff.cases import Part
from voxdiff.errors import VoxdiffError
from voxdiff.io import Volume, check_same_geometry, load_volume, save_volume
from voxdiff.io.atomic import (
    atomic_write_text,
    case_name,
    ensure_out_dir,
    staged_outputs,
)
from voxdiff.io.guard import check_path_plan
from voxdiff.sim.physics import ProjectionSettings, dose_tag, projection_roles

__all__ = ["CaseFiles", "CaseReport", "DatasetReport", "ImageSettings", "ProgressCallback", "Settings", "build_pet_dataset",
           "case_files", "dataset_outputs", "head_image_path", "simulate_case_to_files"]


@dataclass(frozen=True)
class ImageSettings:
    """Settings of the image-space simulation (:func:`voxdiff.sim.pet.simulate_pet`)."""

    fwhm_mm: float = 5.0
    dose_fraction: float = 0.05
    counts: float | None = None          # total expected full-dose counts (None: from mean_brain_counts)
    mean_brain_counts: float = 200.0

    def check(self) -> None:
        """Refuse impossible settings with one sentence naming the option."""
        from voxdiff.sim.pet import check_settings

        check_settings(self.fwhm_mm, self.dose_fraction, self.counts, self.mean_brain_counts)


#: The settings of either physics; their type selects it.
Settings = ProjectionSettings | ImageSettings


class CaseFiles(NamedTuple):
    """The files of one written case (``paths``, by role) and its parameters (the ``CASE_pet.json`` content)."""

    paths: dict[str, Path]
    params: dict[str, Any]


@dataclass
class CaseReport:
    """What a dataset run did with one subject: ``status`` is ``built``, ``skipped`` (verified complete) or
    ``failed`` (``error`` says why; its files are as they were before)."""

    case: str
    labels: Path
    status: str
    paths: dict[str, Path]
    params: dict[str, Any] | None = None
    error: str | None = None


@dataclass
class DatasetReport:
    """The outcome of :func:`build_pet_dataset`.

    ``cases``: this part's subjects in order; ``manifest``: ``manifest.csv`` when this run wrote it
    (else None: a part run with subjects still missing, or none complete); ``missing``: the subjects of
    every part that are not complete; ``summary``: the ``dataset.json`` content written with the
    manifest; ``seconds``: the time spent on the subjects.
    """

    physics: str
    part: Part
    cases: list[CaseReport] = field(default_factory=list)
    manifest: Path | None = None
    missing: list[str] = field(default_factory=list)
    summary: dict[str, Any] | None = None
    seconds: float = 0.0

    def with_status(self, status: str) -> list[CaseReport]:
        """The subjects of this part with ``status`` (built, skipped or failed)."""
        return [c for c in self.cases if c.status == status]

    def raise_for_failures(self) -> None:
        """Raise one :class:`VoxdiffError` naming every failed subject and why, if any failed."""
        failed = self.with_status("failed")
        if failed:
            names = "; ".join(f"{c.case}: {c.error}" for c in failed)
            raise VoxdiffError(f"{len(failed)} of {len(self.cases)} subject(s) failed (the others are kept): {names}")


#: ``progress(done, total, case)``: called with ``(0, total, None)`` before the first subject, then after each.
ProgressCallback = Callable[[int, int, CaseReport | None], None]


# --------------------------------------------------------------------------- names and inputs
def case_files(out_dir: str | Path, case: str, settings: Settings) -> dict[str, Path]:
    """Every output file of one case, by role: projection image roles, then ``lesions_json`` and ``json``;
    image physics ``full``, ``low`` and ``json``."""
    out_dir = Path(out_dir)
    if isinstance(settings, ImageSettings):
        return {"full": out_dir / f"{case}_full.nii.gz", "low": out_dir / f"{case}_low.nii.gz",
                "json": out_dir / f"{case}_pet.json"}
    paths = {role: out_dir / f"{case}_{role}.nii.gz" for role in projection_roles(settings)}
    paths["lesions_json"] = out_dir / f"{case}_lesions.json"
    paths["json"] = out_dir / f"{case}_pet.json"
    return paths


def dataset_outputs(label_files: Sequence[str | Path], out_dir: str | Path, settings: Settings) -> list[Path]:
    """Every file a dataset of ``label_files`` may write (each case's files, ``manifest.csv``, ``dataset.json``),
    for a path plan (:func:`voxdiff.io.guard.check_path_plan`) before any work."""
    out_dir = Path(out_dir)
    return ([p for f in label_files for p in case_files(out_dir, case_name(f), settings).values()]
            + [out_dir / "manifest.csv", out_dir / "dataset.json"])


def head_image_path(head: str, labels: str | Path, scheme: str) -> Path | None:
    """The anatomical image a ``head`` choice reads for the label map ``labels`` (nothing is loaded; for
    ``auto`` it is the T1 in ``../t1/`` beside the labels, which may not exist), or None."""
    if scheme == "brainweb" or head in ("none", "labels"):
        return None
    labels = Path(labels)
    return labels.parent.parent / "t1" / labels.name if head == "auto" else Path(head)


def _head_image(head: str, labels: Volume, scheme: str) -> tuple[Volume, Path] | None:
    """The head image of a ``head`` choice, checked against the labels' geometry, and its path; None when the
    choice reads none (or ``auto`` finds no T1)."""
    assert labels.path is not None
    path = head_image_path(head, labels.path, scheme)
    if path is None or (head == "auto" and not path.is_file()):
        return None
    image = load_volume(path, role="head image")
    check_same_geometry(labels, image, what="--head image")
    return image, path


def _named(label_path: Path, exc: VoxdiffError) -> VoxdiffError:
    """``exc`` naming the label map (the simulation itself only sees arrays)."""
    return exc if str(label_path) in str(exc) else VoxdiffError(f"{label_path}: {exc}")


# --------------------------------------------------------------------------- one case
def _simulate_image_case(label_path: Path, *, case: str, settings: ImageSettings, seed: int, scheme: str, head: str,
                         tables: Path | None) -> tuple[Any, dict[str, Any]]:
    """(the :class:`~voxdiff.sim.pet.PetPair`, its parameters) of one image-physics case; nothing is written."""
    from voxdiff.sim.pet import case_seed, head_mask_from_image, simulate_pet

    labels = load_volume(label_path, role="labels")
    mask, margin, source = None, 0.0, "none"
    if scheme != "brainweb" and head != "none":
        found = _head_image(head, labels, scheme)
        if found is None:
            margin, source = 10.0, "labels"
        else:
            mask, source = head_mask_from_image(found[0], labels.array > 0), str(found[1].resolve())
    try:
        result = simulate_pet(labels, scheme=scheme, fwhm_mm=settings.fwhm_mm, dose_fraction=settings.dose_fraction,
                              counts=settings.counts, mean_brain_counts=settings.mean_brain_counts,
                              seed=case_seed(seed, case), head_mask=mask, head_margin_mm=margin, tables_dir=tables)
    except VoxdiffError as exc:
        raise _named(label_path, exc) from exc
    params = {"case": case, "labels": str(label_path.resolve()), "seed_base": seed, **result.params}
    if source not in ("none", "labels"):
        params["head_mask"] = f"thresholded {source}"
    return result, params


def _stage_image_case(result: Any, params: dict[str, Any], paths: dict[str, Path], stage: Any) -> None:
    """Stage one image-physics case's files in ``stage`` (a :func:`~voxdiff.io.atomic.staged_outputs` block)."""
    save_volume(result.full, stage.path(paths["full"]))
    save_volume(result.low, stage.path(paths["low"]))
    atomic_write_text(stage.path(paths["json"]), json.dumps(params, indent=2) + "\n")


def _projection_case(label_path: Path, out_dir: Path, *, case: str, settings: ProjectionSettings, seed: int,
                     scheme: str, head: str, tables: Path | None) -> CaseFiles:
    """Simulate one projection-physics case and write all its files, or none (the error names the label map)."""
    from voxdiff.sim.physics import simulate_projection_pet

    labels = load_volume(label_path, role="labels")
    found = _head_image(head, labels, scheme)
    t1 = None if found is None else found[0]
    try:
        result = simulate_projection_pet(labels, case=case, seed=seed, settings=settings, scheme=scheme, t1=t1,
                                         head_mask=None if head != "none" or scheme != "muse" else labels.array > 0,
                                         tables_dir=tables)
    except VoxdiffError as exc:
        raise _named(label_path, exc) from exc
    params = {**result.params, "labels": str(label_path.resolve()),
              "t1": str(t1.path.resolve()) if t1 is not None and t1.path is not None else None}
    paths = case_files(out_dir, case, settings)
    with staged_outputs(out_dir) as stage:
        for role, vol in result.images.items():
            save_volume(vol, stage.path(paths[role]), dtype=np.uint16 if role == "lesions" else np.float32)
        atomic_write_text(stage.path(paths["lesions_json"]), json.dumps(result.lesions, indent=2) + "\n")
        # The parameters last: a case with its JSON has every file.
        atomic_write_text(stage.path(paths["json"]), json.dumps(params, indent=2) + "\n")
    return CaseFiles(paths, params)


def simulate_case_to_files(label_path: str | Path, out_dir: str | Path, *, settings: Settings | None = None,
                           case: str | None = None, seed: int = 0, scheme: str = "muse", head: str = "auto",
                           tables: str | Path | None = None, overwrite: bool = False) -> CaseFiles:
    """Simulate PET of one subject from its label map and write every file of the case, or none of them.

    ``settings`` (default :class:`~voxdiff.sim.physics.ProjectionSettings`) chooses the physics; ``case``
    names the outputs (default: the label file's name without its suffix) and, with ``seed``, seeds the
    subject's draws; ``tables`` is the folder of the MUSE region CSVs (default: found beside the labels).
    Without ``overwrite`` an existing output is refused before any work. Returns the paths by role
    (:func:`case_files`) and the parameters written to ``CASE_pet.json``.
    """
    settings = ProjectionSettings() if settings is None else settings
    settings.check()
    label_path, out_dir = Path(label_path), Path(out_dir)
    tables = None if tables is None else Path(tables)
    case = case or case_name(label_path)
    paths = case_files(out_dir, case, settings)
    if not overwrite:
        check_path_plan({}, {"--out-dir": list(paths.values())}, existing="--overwrite")
    if isinstance(settings, ProjectionSettings):
        return _projection_case(label_path, out_dir, case=case, settings=settings, seed=seed, scheme=scheme,
                                head=head, tables=tables)
    result, params = _simulate_image_case(label_path, case=case, settings=settings, seed=seed, scheme=scheme,
                                          head=head, tables=tables)
    with staged_outputs(out_dir) as stage:
        _stage_image_case(result, params, paths, stage)
    return CaseFiles(paths, params)


# --------------------------------------------------------------------------- datasets
def _complete_case(paths: dict[str, Path], shape: tuple[int, ...], settings: ProjectionSettings,
                   seed: int) -> dict[str, Any] | None:
    """The case's parameters if all its files exist, every volume reads with ``shape`` and the
    settings and seed match this run's; else None (the case is simulated again)."""
    try:
        params = json.loads(paths["json"].read_text())
        json.loads(paths["lesions_json"].read_text())
        if params.get("settings") != settings.record() or params.get("seed_base") != seed:
            return None
        for role, path in paths.items():
            if role not in ("json", "lesions_json") and load_volume(path).shape != shape:
                return None
    except (OSError, ValueError, VoxdiffError):
        return None
    return params


def _verified(label_path: Path, paths: dict[str, Path], settings: ProjectionSettings,
              seed: int) -> dict[str, Any] | None:
    """:func:`_complete_case` for a subject, reading its label map's shape only when it has a parameter file."""
    if not paths["json"].exists():
        return None
    return _complete_case(paths, load_volume(label_path, role="labels").shape, settings, seed)


def _other_settings(json_path: Path, settings: ProjectionSettings, seed: int) -> bool:
    """Whether a case's parameter file records other settings or seed than this run's (an earlier result
    that re-simulating would replace); False when there is none or it is unreadable (an incomplete case)."""
    try:
        params = json.loads(json_path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(params, dict) and (params.get("settings") != settings.record()
                                         or params.get("seed_base") != seed)


def _manifest_roles(settings: ProjectionSettings) -> tuple[str, list[str]]:
    """(the role named ``source``, the other image roles in manifest order)."""
    tags = [dose_tag(d) for d in settings.doses]
    source = "low_5" if "5" in tags else f"low_{tags[0]}"
    return source, [r for r in projection_roles(settings) if r != "full"]


def build_pet_dataset(label_files: Sequence[str | Path], out_dir: str | Path, *, settings: Settings | None = None,
                      seed: int = 0, scheme: str = "muse", head: str = "auto", tables: str | Path | None = None,
                      part: Part | None = None, overwrite: bool = False, labels_dir: str | Path | None = None,
                      progress: ProgressCallback | None = None) -> DatasetReport:
    """Simulate every label map of ``label_files`` into ``out_dir`` and write ``manifest.csv`` + ``dataset.json``.

    Subjects are ordered by case id (the file name without its suffix); each draws from ``(seed, its id)``
    whatever part runs it. Projection settings (default): each subject all or nothing; verified-complete
    subjects are skipped, a failing subject is reported (``status == "failed"``) and the others kept;
    ``part`` runs every ``part.count``-th subject; the manifest (``source`` = ``low_5`` or the first dose,
    ``target`` = ``full``, one column per role, ``label``) lists every complete subject and is written by a
    single-part run, or by a part run that finds no subject missing. Without ``overwrite`` a subject made
    with other settings or seed is refused before any work. Image settings: one transaction over the whole
    dataset (``source`` = low, ``target`` = full); a failing subject raises and leaves ``out_dir`` as it
    was; without ``overwrite`` existing outputs are refused; ``part`` is not supported.
    ``labels_dir`` is recorded in ``dataset.json`` (default: the first label map's folder).
    """
    settings = ProjectionSettings() if settings is None else settings
    settings.check()
    files = sorted((Path(f) for f in label_files), key=case_name)
    if not files:
        raise VoxdiffError("no label maps to simulate")
    out_dir = Path(out_dir)
    tables = None if tables is None else Path(tables)
    labels_dir = files[0].parent if labels_dir is None else Path(labels_dir)
    common = {"settings": settings, "seed": seed, "scheme": scheme, "head": head, "tables": tables,
              "labels_dir": labels_dir}
    if isinstance(settings, ImageSettings):
        if part is not None:
            raise VoxdiffError("part= splits projection-physics datasets only (image physics is all or nothing)")
        if not overwrite:
            check_path_plan({}, {"--out-dir": dataset_outputs(files, out_dir, settings)}, existing="--overwrite")
        return _image_dataset(files, out_dir, progress=progress, **common)
    part = Part() if part is None else part
    if not overwrite:
        for f in files:
            json_path = case_files(out_dir, case_name(f), settings)["json"]
            if _other_settings(json_path, settings, seed):
                raise VoxdiffError(f"{json_path}: subject {case_name(f)} was simulated with other settings or another "
                                   "--seed; pass --overwrite to simulate it again, or choose another --out-dir")
    return _projection_dataset(files, out_dir, part=part, progress=progress, **common)


def _projection_dataset(files: list[Path], out_dir: Path, *, part: Part, settings: ProjectionSettings, seed: int,
                        scheme: str, head: str, tables: Path | None, labels_dir: Path,
                        progress: ProgressCallback | None) -> DatasetReport:
    """The projection-physics builder of :func:`build_pet_dataset`."""
    from voxdiff.data.manifest import Case, write_manifest

    ensure_out_dir(out_dir)
    report = DatasetReport(physics="projection", part=part)
    mine = part.select(files)
    start = time.perf_counter()
    if progress is not None:
        progress(0, len(mine), None)
    for i, path in enumerate(mine, 1):
        case = case_name(path)
        paths = case_files(out_dir, case, settings)
        params = _verified(path, paths, settings, seed)
        if params is not None:
            entry = CaseReport(case, path, "skipped", paths, params)
        else:
            try:
                params = _projection_case(path, out_dir, case=case, settings=settings, seed=seed, scheme=scheme,
                                          head=head, tables=tables).params
                entry = CaseReport(case, path, "built", paths, params)
            except VoxdiffError as exc:
                entry = CaseReport(case, path, "failed", paths, error=" ".join(str(exc).split()))
        report.cases.append(entry)
        if progress is not None:
            progress(i, len(mine), entry)
    report.seconds = time.perf_counter() - start

    # The manifest lists every complete subject (all parts); a part run writes it only when none is missing.
    ran = {c.case: c for c in report.cases}
    source, roles = _manifest_roles(settings)
    complete: list[tuple[Path, str, dict[str, Path]]] = []
    for path in files:
        case = case_name(path)
        paths = case_files(out_dir, case, settings)
        ok = ran[case].status != "failed" if case in ran else _verified(path, paths, settings, seed) is not None
        if ok:
            complete.append((path, case, paths))
        else:
            report.missing.append(case)
    if complete and not (part.count > 1 and report.missing):
        cases = [Case(case, {"source": paths[source], "target": paths["full"],
                             **{r: paths[r] for r in roles}, "label": path}) for path, case, paths in complete]
        manifest = out_dir / "manifest.csv"
        summary = {"physics": "projection", "cases": len(cases), "labels_dir": str(labels_dir.resolve()),
                   "scheme": scheme, "seed": seed, "head": head, "settings": settings.record(),
                   "missing": report.missing, "roles": {"source": source, "target": "full", "label": "region labels"},
                   "seconds_this_run": round(report.seconds, 1)}
        with staged_outputs() as stage:  # the manifest and its description together
            write_manifest(cases, stage.path(manifest), base=out_dir)
            atomic_write_text(stage.path(out_dir / "dataset.json"), json.dumps(summary, indent=2) + "\n")
        report.manifest, report.summary = manifest, summary
    return report


def _image_dataset(files: list[Path], out_dir: Path, *, settings: ImageSettings, seed: int, scheme: str, head: str,
                   tables: Path | None, labels_dir: Path, progress: ProgressCallback | None) -> DatasetReport:
    """The image-physics builder of :func:`build_pet_dataset`: all or nothing over the dataset."""
    from voxdiff.data.manifest import Case, write_manifest

    report = DatasetReport(physics="image", part=Part())
    cases: list[Case] = []
    psnrs: list[float] = []
    start = time.perf_counter()
    # One transaction over the dataset: a bad label map (or a full disk) leaves no dataset that looks
    # complete, and an earlier dataset in ``out_dir`` byte-identical.
    with staged_outputs(out_dir) as stage:
        if progress is not None:
            progress(0, len(files), None)
        for i, path in enumerate(files, 1):
            case = case_name(path)
            result, params = _simulate_image_case(path, case=case, settings=settings, seed=seed, scheme=scheme,
                                                  head=head, tables=tables)
            paths = case_files(out_dir, case, settings)
            _stage_image_case(result, params, paths, stage)
            cases.append(Case(case, {"source": paths["low"], "target": paths["full"], "label": path}))
            psnrs.append(params["psnr_low_vs_full_db"])
            report.cases.append(CaseReport(case, path, "built", paths, params))
            if progress is not None:
                progress(i, len(files), report.cases[-1])
        report.seconds = time.perf_counter() - start
        summary = {
            "cases": len(cases), "labels_dir": str(labels_dir.resolve()), "scheme": scheme,
            "fwhm_mm": settings.fwhm_mm, "dose_fraction": settings.dose_fraction, "counts": settings.counts,
            "mean_brain_counts": settings.mean_brain_counts, "seed": seed, "head": head,
            "psnr_low_vs_full_db": {"mean": float(np.mean(psnrs)), "std": float(np.std(psnrs)),
                                    "min": float(np.min(psnrs)), "max": float(np.max(psnrs))},
            "seconds": round(report.seconds, 1),
            "roles": {"source": "low-dose", "target": "full-dose", "label": "region labels"},
        }
        atomic_write_text(stage.path(out_dir / "dataset.json"), json.dumps(summary, indent=2) + "\n")
        manifest = out_dir / "manifest.csv"
        write_manifest(cases, stage.path(manifest), base=out_dir)
    report.manifest, report.summary = manifest, summary
    return report
