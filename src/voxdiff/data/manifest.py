"""Case lists: manifests (CSV/JSON), folder scans, and seeded train/val/test splits.

A :class:`Case` is one subject: an id and one file per role (``source``/``target``,
``image``/``label``, ...). Manifests name files relative to the manifest's own folder, so a
dataset folder can be moved as a whole.
"""

from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

from voxdiff.errors import VoxdiffError
from voxdiff.io import atomic_write_text
from voxdiff.io.atomic import volume_files_by_case

__all__ = ["Case", "load_manifest", "scan_folder", "write_manifest", "split_cases", "SCAN_SUFFIXES"]

#: Columns that name the case rather than a file.
CASE_COLUMNS = ("case", "id")
#: Columns kept as metadata (never treated as a volume path).
META_COLUMNS = ("split",)
#: Volume extensions that :func:`scan_folder` picks up.
SCAN_SUFFIXES = (".nii.gz", ".nii", ".mha", ".nrrd")


@dataclass
class Case:
    """One subject: ``id`` and a volume path per role; ``meta`` holds non-path columns (e.g. ``split``)."""

    id: str
    paths: dict[str, Path]
    meta: dict[str, str] = field(default_factory=dict)

    def path(self, role: str) -> Path:
        """The file of ``role``, or a clear error naming the case."""
        try:
            return self.paths[role]
        except KeyError:
            have = ", ".join(sorted(self.paths)) or "none"
            raise VoxdiffError(f"case '{self.id}' has no '{role}' volume (roles present: {have})") from None


def _rows_from_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise VoxdiffError(f"{path}: could not read the manifest ({exc})") from exc
    reader = csv.DictReader(io.StringIO(text))
    header = [h.strip() for h in (reader.fieldnames or [])]
    rows = []
    for raw in reader:
        if raw is None or all((v or "").strip() == "" for v in raw.values() if isinstance(v, str)):
            continue
        if None in raw:  # more cells than header columns
            raise VoxdiffError(f"{path}: line {reader.line_num} has more cells than the header has columns")
        rows.append({k.strip(): (v or "").strip() for k, v in raw.items()})
    return header, rows


def _rows_from_json(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise VoxdiffError(f"{path}: not a readable JSON manifest ({exc})") from exc
    if isinstance(data, dict):
        if "cases" not in data:
            raise VoxdiffError(f"{path}: a JSON manifest is a list of cases or an object with a 'cases' list")
        data = data["cases"]
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise VoxdiffError(f"{path}: the 'cases' of a JSON manifest must be a list of objects")
    header: list[str] = []
    rows = []
    for r in data:
        for k in r:
            if k not in header:
                header.append(k)
        rows.append({str(k): "" if v is None else str(v).strip() for k, v in r.items()})
    return header, rows


def load_manifest(path: str | os.PathLike, roles: Sequence[str] | None = None, *, check_exists: bool = True) -> list[Case]:
    """Read a CSV or JSON manifest into cases; relative paths resolve against the manifest's folder.

    CSV: a header with ``case`` (or ``id``) and one column per role, e.g. ``case,source,target``.
    JSON: ``[{"case": "a", "source": "a_low.nii.gz", ...}]`` or ``{"cases": [...]}``.
    With ``roles``, only those columns become paths (other columns go to ``meta``) and each
    must be present; without, every column except the case id and ``split`` is a role.
    """
    path = Path(path)
    if not path.exists():
        raise VoxdiffError(f"{path}: manifest not found")
    if path.is_dir():
        raise VoxdiffError(f"{path}: is a folder, expected a manifest file (.csv or .json)")
    suffix = path.suffix.lower()
    if suffix == ".json":
        header, rows = _rows_from_json(path)
    elif suffix in (".csv", ".txt"):
        header, rows = _rows_from_csv(path)
    else:
        raise VoxdiffError(f"{path}: unknown manifest format '{suffix}' (use .csv or .json)")
    case_col = next((c for c in CASE_COLUMNS if c in header), None)
    if case_col is None:
        raise VoxdiffError(f"{path}: the manifest needs a 'case' (or 'id') column; found columns: {', '.join(header) or 'none'}")
    if not rows:
        raise VoxdiffError(f"{path}: the manifest lists no case")
    others = [c for c in header if c not in CASE_COLUMNS]
    if roles is not None:
        missing = [r for r in roles if r not in header]
        if missing:
            raise VoxdiffError(f"{path}: the manifest has no column for role(s) {', '.join(missing)} (columns: {', '.join(header)})")
        role_cols = list(roles)
    else:
        role_cols = [c for c in others if c not in META_COLUMNS]
    base = path.parent
    cases: list[Case] = []
    seen: set[str] = set()
    for i, row in enumerate(rows, start=1):
        cid = row.get(case_col, "")
        if not cid:
            raise VoxdiffError(f"{path}: case {i} has an empty '{case_col}'")
        if cid in seen:
            raise VoxdiffError(f"{path}: duplicate case id '{cid}'")
        seen.add(cid)
        paths: dict[str, Path] = {}
        for role in role_cols:
            value = row.get(role, "")
            if not value:
                raise VoxdiffError(f"{path}: case '{cid}' has no path for role '{role}'")
            p = Path(value).expanduser()
            p = Path(os.path.abspath(p if p.is_absolute() else base / p))
            if check_exists and not p.exists():
                raise VoxdiffError(f"{path}: case '{cid}', role '{role}': file {p} does not exist")
            paths[role] = p
        meta = {k: v for k, v in row.items() if k not in role_cols and k != case_col}
        cases.append(Case(cid, paths, meta))
    return cases




def scan_folder(root: str | os.PathLike, roles: Sequence[str], *, suffixes: Sequence[str] = SCAN_SUFFIXES) -> list[Case]:
    """Cases from the layout ``root/<role>/<case>.nii.gz`` (also ``.nii``, ``.mha``, ``.nrrd``).

    Every case must have a file in every role folder; a mismatch is an error that names it.
    """
    root = Path(root)
    if not root.is_dir():
        raise VoxdiffError(f"{root}: dataset folder not found")
    if not roles:
        raise VoxdiffError("scan_folder needs at least one role")
    found: dict[str, dict[str, Path]] = {}
    for role in roles:
        folder = root / role
        if not folder.is_dir():
            raise VoxdiffError(f"{root}: missing role folder '{role}/' (expected {folder})")
        files = volume_files_by_case(folder, suffixes)
        if not files:
            raise VoxdiffError(f"{folder}: no volume files ({', '.join(suffixes)})")
        found[role] = files
    all_ids = sorted(set().union(*(set(f) for f in found.values())))
    for cid in all_ids:
        lacking = [r for r in roles if cid not in found[r]]
        if lacking:
            raise VoxdiffError(f"{root}: case '{cid}' has no file in {', '.join(r + '/' for r in lacking)}")
    return [Case(cid, {r: found[r][cid] for r in roles}) for cid in all_ids]


def write_manifest(cases: Sequence[Case], path: str | os.PathLike, *, base: str | os.PathLike | None = None) -> Path:
    """Write ``cases`` as a CSV manifest atomically, with paths relative to the manifest's folder.

    ``base`` is that folder when ``path`` is a temporary name elsewhere (a staged output,
    :func:`voxdiff.io.atomic.staged_outputs`)."""
    path = Path(path)
    if not cases:
        raise VoxdiffError(f"{path}: no case to write")
    roles: list[str] = []
    metas: list[str] = []
    for c in cases:
        roles += [r for r in c.paths if r not in roles]
        metas += [m for m in c.meta if m not in metas and m not in roles]
    base = Path(base).resolve() if base is not None else path.parent.resolve() if str(path.parent) else Path.cwd()
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["case", *roles, *metas])
    for c in cases:
        cells = [c.id]
        for r in roles:
            p = c.paths.get(r)
            cells.append("" if p is None else Path(os.path.relpath(Path(p).resolve(), base)).as_posix())
        cells += [c.meta.get(m, "") for m in metas]
        writer.writerow(cells)
    return atomic_write_text(path, buf.getvalue())


def _explicit_split(cases: Sequence[Case], splits: Mapping[str, Iterable[str]]) -> dict[str, list[Case]]:
    by_id = {c.id: c for c in cases}
    out: dict[str, list[Case]] = {}
    owner: dict[str, str] = {}
    for name, ids in splits.items():
        ids = [ids] if isinstance(ids, str) else list(ids)
        for cid in ids:
            if cid not in by_id:
                raise VoxdiffError(f"split '{name}' names case '{cid}', which is not in the case list")
            if cid in owner:
                raise VoxdiffError(f"case '{cid}' is in both split '{owner[cid]}' and split '{name}'")
            owner[cid] = name
        out[name] = [by_id[cid] for cid in ids]
    rest = [c for c in cases if c.id not in owner]
    out.setdefault("train", [])
    out["train"] = out["train"] + rest
    out.setdefault("val", [])
    out.setdefault("test", [])
    return out


def split_cases(
    cases: Sequence[Case],
    val_fraction: float = 0.1,
    test_fraction: float = 0.0,
    seed: int = 0,
    *,
    splits: Mapping[str, Iterable[str]] | None = None,
) -> dict[str, list[Case]]:
    """Split cases (never voxels) into disjoint ``train``/``val``/``test`` lists.

    Seeded and deterministic: the same ids, fractions and seed give the same split whatever
    the input order. A split asked for with a non-zero fraction gets at least one case.
    ``splits`` (e.g. ``{"val": ["a", "b"], "test": [...]}``) fixes the ids instead; cases it
    does not name go to ``train``.
    """
    cases = list(cases)
    if not cases:
        raise VoxdiffError("cannot split an empty case list")
    ids = [c.id for c in cases]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise VoxdiffError(f"duplicate case id '{dup}' in the case list")
    if splits is not None:
        return _explicit_split(cases, splits)
    for name, frac in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= frac < 1.0:
            raise VoxdiffError(f"{name} must be in [0, 1), got {frac}")
    n = len(cases)
    n_val = max(1, round(n * val_fraction)) if val_fraction > 0 else 0
    n_test = max(1, round(n * test_fraction)) if test_fraction > 0 else 0
    if n_val + n_test >= n:
        raise VoxdiffError(f"{n} case(s) are too few for val_fraction={val_fraction} and test_fraction={test_fraction} (train would be empty)")
    ordered = sorted(cases, key=lambda c: c.id)
    perm = np.random.default_rng(seed).permutation(n)
    shuffled = [ordered[i] for i in perm]
    test, val, train = shuffled[:n_test], shuffled[n_test:n_test + n_val], shuffled[n_test + n_val:]
    key = {c.id: i for i, c in enumerate(ordered)}
    return {name: sorted(part, key=lambda c: key[c.id]) for name, part in (("train", train), ("val", val), ("test", test))}
