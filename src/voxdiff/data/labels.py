"""Segmentation targets from a parcellation: merge region labels into a few classes ``0..K``.

The IXI data ship DLMUSE parcellations (about 145 single regions) with two tables beside
them: ``muse_single_labels.csv`` (``Index,Code,Name`` per single region) and
``muse_derived_mapping.csv`` (no header; ``id,name,label,label,...`` per composite region,
rows padded with empty fields). A class is any union of single labels, composite ids or
region names; :func:`composite_label_map` turns a parcellation into the class map and
:func:`make_label_dataset` does it for a whole folder and writes a training manifest.
"""

from __future__ import annotations

import csv
import contextlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence, Union

import numpy as np

from voxdiff.errors import VoxdiffError
from voxdiff.io.atomic import volume_files_by_case

SINGLE_LABELS_CSV = "muse_single_labels.csv"
DERIVED_MAPPING_CSV = "muse_derived_mapping.csv"

#: One class: a label / composite id / region name, or a list of them (their union).
ClassSpec = Union[int, str, Sequence[Union[int, str]]]


@dataclass
class RegionTables:
    """The parcellation's lookup tables: single labels by value and composites by id."""

    single: dict[int, str] = field(default_factory=dict)
    composite: dict[int, tuple[str, list[int]]] = field(default_factory=dict)

    def by_name(self, name: str) -> list[int]:
        """Single labels of a region name (a composite's or a single region's), case-insensitive."""
        key = name.strip().lower()
        for cid, (cname, labels) in self.composite.items():
            if cname.lower() == key:
                return list(labels)
        hits = [v for v, n in self.single.items() if n.lower() == key]
        if not hits:
            raise VoxdiffError(f"unknown region name '{name}' (not in the single-label or composite tables)")
        return hits

    def expand(self, item: int | str) -> list[int]:
        """Single labels of one item: a composite id expands, any other integer is a single label, a name is looked up."""
        if isinstance(item, str) and not item.strip().lstrip("-").isdigit():
            return self.by_name(item)
        value = int(item)
        if value in self.composite:
            return list(self.composite[value][1])
        # Maps may hold values the tables do not name (e.g. 1 = cortical CSF only appears in 600).
        return [value]


@dataclass
class LabelScheme:
    """Classes ``1..K`` as lists of single labels (``0`` is the background), with names."""

    name: str
    class_names: list[str]
    classes: list[list[int]]

    @property
    def num_classes(self) -> int:
        """Classes including the background (what ``model.num_classes`` must be)."""
        return len(self.classes) + 1

    def to_dict(self) -> dict:
        """Plain data (written as ``classes.json`` beside generated labels)."""
        return {"name": self.name, "num_classes": self.num_classes,
                "classes": {str(i + 1): {"name": n, "labels": ls}
                            for i, (n, ls) in enumerate(zip(self.class_names, self.classes))}}


def read_single_labels(path: str | Path) -> dict[int, str]:
    """``muse_single_labels.csv`` (header ``Index,Code,Name``) -> ``{label value: name}``."""
    path = Path(path)
    if not path.is_file():
        raise VoxdiffError(f"{path}: single-label table not found")
    out: dict[int, str] = {}
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or not {"Index", "Name"} <= set(reader.fieldnames):
            raise VoxdiffError(f"{path}: expected columns Index and Name, found {reader.fieldnames}")
        for i, row in enumerate(reader, start=2):
            try:
                out[int(row["Index"])] = (row["Name"] or "").strip()
            except (TypeError, ValueError):
                raise VoxdiffError(f"{path}: line {i} has a non-integer Index {row.get('Index')!r}") from None
    return out


def read_derived_mapping(path: str | Path) -> dict[int, tuple[str, list[int]]]:
    """``muse_derived_mapping.csv`` (no header, ``id,name,labels...``) -> ``{id: (name, labels)}``.

    Empty trailing fields are ignored.
    """
    path = Path(path)
    if not path.is_file():
        raise VoxdiffError(f"{path}: derived-label mapping not found")
    out: dict[int, tuple[str, list[int]]] = {}
    with open(path, newline="") as f:
        for i, row in enumerate(csv.reader(f), start=1):
            cells = [c.strip() for c in row]
            if not any(cells):
                continue
            if len(cells) < 3:
                raise VoxdiffError(f"{path}: line {i} needs 'id,name,label[,label...]'")
            try:
                cid = int(cells[0])
                labels = [int(c) for c in cells[2:] if c]
            except ValueError:
                raise VoxdiffError(f"{path}: line {i} holds a non-integer id or label") from None
            out[cid] = (cells[1], labels)
    return out


def read_region_tables(folder: str | Path) -> RegionTables:
    """Both tables from a folder (the one holding the CSVs, e.g. ``ixi-t1-2mm/``)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise VoxdiffError(f"{folder}: folder with {SINGLE_LABELS_CSV} and {DERIVED_MAPPING_CSV} not found")
    return RegionTables(read_single_labels(folder / SINGLE_LABELS_CSV),
                        read_derived_mapping(folder / DERIVED_MAPPING_CSV))


def _names_matching(tables: RegionTables, *names: str) -> list[int]:
    return [v for n in names for v in tables.by_name(n)]


#: name -> (description, builder(tables) -> (class names, class specs)).
PRESETS: dict[str, tuple[str, Callable[[RegionTables], tuple[list[str], list[ClassSpec]]]]] = {
    "tissue": ("1 CSF (cortical CSF 600 + ventricles 509), 2 GM (601), 3 WM (604)",
               lambda t: (["CSF", "GM", "WM"], [[600, 509], [601], [604]])),
    "ventricles": ("1 lateral ventricles (left + right)",
                   lambda t: (["lateral_ventricles"], [_names_matching(t, "LateralVentricle_L", "LateralVentricle_R")])),
    "hippocampus": ("1 hippocampus (left + right)",
                    lambda t: (["hippocampus"], [_names_matching(t, "Hippocampus_L", "Hippocampus_R")])),
    "hippocampus_lr": ("1 left hippocampus, 2 right hippocampus",
                       lambda t: (["hippocampus_L", "hippocampus_R"],
                                  [_names_matching(t, "Hippocampus_L"), _names_matching(t, "Hippocampus_R")])),
}


def resolve_classes(classes: Sequence[ClassSpec], tables: RegionTables | None = None,
                    names: Sequence[str] | None = None, scheme_name: str = "custom") -> LabelScheme:
    """Expand class specs into single labels; refuse a label claimed by two classes."""
    tables = tables or RegionTables()
    if not classes:
        raise VoxdiffError("at least one class is needed")
    expanded: list[list[int]] = []
    owner: dict[int, int] = {}
    for k, spec in enumerate(classes, start=1):
        items = [spec] if isinstance(spec, (int, str, np.integer)) else list(spec)
        labels: list[int] = []
        for item in items:
            for v in tables.expand(item):
                if v == 0:
                    raise VoxdiffError(f"class {k} includes label 0, which is the background")
                if v in owner and owner[v] != k:
                    raise VoxdiffError(f"label {v} is in both class {owner[v]} and class {k}")
                owner[v] = k
                if v not in labels:
                    labels.append(v)
        if not labels:
            raise VoxdiffError(f"class {k} ({spec!r}) contains no label")
        expanded.append(sorted(labels))
    names = list(names) if names is not None else [f"class{k}" for k in range(1, len(expanded) + 1)]
    if len(names) != len(expanded):
        raise VoxdiffError(f"{len(names)} class names for {len(expanded)} classes")
    return LabelScheme(scheme_name, names, expanded)


def preset_scheme(name: str, tables: RegionTables) -> LabelScheme:
    """The scheme of a preset (see :data:`PRESETS`)."""
    if name not in PRESETS:
        raise VoxdiffError(f"unknown label preset '{name}' (known: {', '.join(PRESETS)})")
    names, specs = PRESETS[name][1](tables)
    return resolve_classes(specs, tables, names, scheme_name=name)


def parse_classes(text: str) -> tuple[list[str], list[list[str]]]:
    """``"CSF=600+509,GM=601,WM=604"`` (names optional: ``"600+509,601"``) -> (names, specs)."""
    names, specs = [], []
    for k, part in enumerate((p.strip() for p in text.split(",")), start=1):
        if not part:
            raise VoxdiffError(f"--classes '{text}': empty class {k}")
        name, _, body = part.rpartition("=")
        names.append(name.strip() or f"class{k}")
        specs.append([x.strip() for x in body.split("+") if x.strip()])
    return names, specs


def composite_label_map(labels: np.ndarray, classes: Sequence[ClassSpec] | LabelScheme,
                        tables: RegionTables | None = None) -> np.ndarray:
    """Remap a parcellation to classes: voxels of class ``k`` (1-based) get ``k``, others 0.

    ``classes`` is a :class:`LabelScheme` or a list of class specs (each an int label or
    composite id, a region name, or a list of those: e.g. ``[[600, 509], 601, 604]`` or
    ``["Hippocampus_L", "Hippocampus_R"]``); names and composite ids need ``tables``.
    Returns uint8 (int16 past 255 classes) of the input's shape.
    """
    scheme = classes if isinstance(classes, LabelScheme) else resolve_classes(classes, tables)
    arr = np.asarray(labels)
    if not np.issubdtype(arr.dtype, np.integer):
        rounded = np.rint(arr)
        if arr.size and np.abs(arr - rounded).max() > 1e-3:
            raise VoxdiffError("a parcellation must hold integer labels (found non-integer values)")
        arr = rounded.astype(np.int64)
    if arr.size and arr.min() < 0:
        raise VoxdiffError(f"a parcellation must hold non-negative labels, found {int(arr.min())}")
    out_dtype = np.uint8 if scheme.num_classes <= 256 else np.int16
    top = max([int(arr.max()) if arr.size else 0] + [v for ls in scheme.classes for v in ls])
    lut = np.zeros(top + 1, dtype=out_dtype)
    for k, ls in enumerate(scheme.classes, start=1):
        lut[ls] = k
    return lut[arr]


def _volume_files(folder: Path, what: str) -> dict[str, Path]:
    if not folder.is_dir():
        raise VoxdiffError(f"{folder}: {what} folder not found")
    files = volume_files_by_case(folder, (".nii.gz", ".nii", ".mha", ".nrrd"))
    if not files:
        raise VoxdiffError(f"{folder}: no volume files (.nii.gz, .nii, .mha, .nrrd) in the {what} folder")
    return files


def make_label_dataset(labels_dir: str | Path, images_dir: str | Path, out_dir: str | Path,
                       scheme: LabelScheme, *, cases: Iterable[str] | None = None, limit: int | None = None,
                       progress: Callable[[int, int, str], None] | None = None, overwrite: bool = False) -> Path:
    """Remap every parcellation in ``labels_dir`` and write ``out_dir/labels/<case>.nii.gz`` (uint8,
    the parcellation's geometry), ``out_dir/classes.json`` and ``out_dir/manifest.csv``
    (``case,image,label``; paths relative to the manifest). Returns the manifest path.

    Each parcellation needs an image of the same case id (file stem) and geometry in ``images_dir``;
    missing images are reported before any file is written, and each file is written atomically.
    No output may be an input, or lie directly in the labels or images folder; existing outputs
    need ``overwrite``. A failing case is reported at the end (a :class:`VoxdiffError` naming it)
    after the others were written and listed in the manifest.
    """
    from voxdiff.data.manifest import write_manifest
    from voxdiff.io import atomic_write_text
    from voxdiff.io.atomic import staged_outputs
    from voxdiff.io.guard import check_path_plan

    labels_dir, images_dir, out_dir = Path(labels_dir), Path(images_dir), Path(out_dir)
    label_files = _volume_files(labels_dir, "labels")
    image_files = _volume_files(images_dir, "images")
    ids = sorted(label_files) if cases is None else list(cases)
    for cid in ids:
        if cid not in label_files:
            raise VoxdiffError(f"{labels_dir}: no label file for case '{cid}'")
        if cid not in image_files:
            raise VoxdiffError(f"{images_dir}: no image for case '{cid}' (label file {label_files[cid].name})")
    if limit is not None:
        ids = ids[: max(0, int(limit))]
    if not ids:
        raise VoxdiffError(f"{labels_dir}: no case to convert")
    out_labels = out_dir / "labels"
    check_path_plan({"--labels-dir": [label_files[c] for c in ids], "--images-dir": [image_files[c] for c in ids]},
                    {"--out-dir": [*(out_labels / f"{c}.nii.gz" for c in ids), out_dir / "classes.json",
                                   out_dir / "manifest.csv"]},
                    input_folders={"--labels-dir": labels_dir, "--images-dir": images_dir},
                    existing=None if overwrite else "--overwrite")
    written: list = []  # Case rows of the completed cases
    failed: dict[str, str] = {}
    created = [p for p in (out_labels, *out_labels.parents) if not p.exists()]
    try:
        _convert(ids, label_files, image_files, out_labels, scheme, written, failed, progress)
    except BaseException:
        if not written:
            for d in created:  # the folders this call made, if still empty
                with contextlib.suppress(OSError):
                    d.rmdir()
        raise
    with staged_outputs() as stage:
        atomic_write_text(stage.path(out_dir / "classes.json"), json.dumps(scheme.to_dict(), indent=2) + "\n")
        write_manifest(written, stage.path(out_dir / "manifest.csv"), base=out_dir)
    if failed:
        names = "; ".join(f"{k}: {v}" for k, v in failed.items())
        raise VoxdiffError(f"{len(failed)} of {len(ids)} case(s) failed ({len(written)} written to {out_labels} "
                           f"and listed in {out_dir / 'manifest.csv'}): {names}")
    return out_dir / "manifest.csv"


def _convert(ids: list[str], label_files: dict[str, Path], image_files: dict[str, Path], out_labels: Path,
             scheme: LabelScheme, written: list, failed: dict[str, str],
             progress: Callable[[int, int, str], None] | None) -> None:
    """Write each case's label map, appending it to ``written`` (or its error to ``failed``)."""
    from voxdiff.data.manifest import Case
    from voxdiff.io import check_same_geometry, load_volume, save_volume
    from voxdiff.io.atomic import ensure_out_dir

    ensure_out_dir(out_labels)
    # A dataset builder: a bad case is reported (exit 2 at the end) and the completed ones are kept,
    # each written atomically; the manifest lists only those.
    for i, cid in enumerate(ids):
        if progress is not None:
            progress(i, len(ids), cid)
        dest = out_labels / f"{cid}.nii.gz"
        try:
            lab = load_volume(label_files[cid], role=f"case '{cid}' labels")
            img = load_volume(image_files[cid], role=f"case '{cid}' image")
            check_same_geometry(img, lab, what=f"case '{cid}'")
            try:
                remapped = composite_label_map(lab.array, scheme)
            except VoxdiffError as exc:
                raise VoxdiffError(f"{label_files[cid]}: {exc}") from exc
            save_volume(remapped, dest, like=lab, dtype=remapped.dtype)
        except VoxdiffError as exc:
            if isinstance(exc.__cause__, OSError):  # a full disk: every later case would fail too
                raise
            failed[cid] = " ".join(str(exc).split())
            continue
        written.append(Case(cid, {"image": image_files[cid].resolve(), "label": dest.resolve()}))
    if progress is not None:
        progress(len(ids), len(ids), "")
    if not written:
        names = "; ".join(f"{k}: {v}" for k, v in failed.items())
        raise VoxdiffError(f"every case failed: {names}" if len(failed) > 1 else next(iter(failed.values())))


__all__ = [
    "RegionTables", "LabelScheme", "PRESETS", "read_single_labels", "read_derived_mapping", "read_region_tables",
    "resolve_classes", "preset_scheme", "parse_classes", "composite_label_map", "make_label_dataset",
]
