"""The path plan of a command, checked before any work: no output may replace or delete an input.

Every command lists what it reads (files, and folders whose every volume file it reads as a
case) and the concrete files it will write, then calls :func:`check_path_plan` once, before a
model is loaded or a volume read. All paths are compared resolved (``~``, ``./``, ``..`` and
symlinks), so two spellings of one file are one file. Refused, each with one sentence naming
both options and the path:

* an output that is an input file (or inside an input DICOM series folder, or a folder output
  that holds an input);
* an output written directly into a folder of input cases (it would replace a case or be read
  as one by the next run);
* two outputs that are the same file;
* with ``existing`` given, an output that already exists (the sentence names the options that
  allow it, e.g. ``--overwrite``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Mapping, Union

from voxdiff.errors import VoxdiffError

__all__ = ["PathSpec", "resolved", "check_path_plan"]

#: One option's paths: a path, several (e.g. the per-case files of a folder), or None (not given).
PathSpec = Union[str, os.PathLike, Iterable[Union[str, os.PathLike]], None]


def resolved(path: str | os.PathLike) -> Path:
    """``path`` absolute, with ``~``, ``.``, ``..`` and symlinks resolved (it need not exist)."""
    return Path(os.path.realpath(os.path.expanduser(os.fspath(path))))


def _expand(spec: Mapping[str, PathSpec] | None) -> list[tuple[str, Path, Path]]:
    """``(option, path as given, resolved path)`` for every path of every option."""
    out: list[tuple[str, Path, Path]] = []
    for option, paths in (spec or {}).items():
        if paths is None:
            continue
        if isinstance(paths, (str, os.PathLike)):
            paths = [paths]
        for p in paths:
            if p is None or str(p).startswith("pretrained:"):
                continue
            out.append((option, Path(p), resolved(p)))
    return out


def check_path_plan(inputs: Mapping[str, PathSpec], outputs: Mapping[str, PathSpec], *,
                    input_folders: Mapping[str, PathSpec] | None = None, existing: str | None = None) -> None:
    """Refuse a plan whose outputs could replace an input or each other (see the module docstring).

    ``inputs`` maps an option (as printed, e.g. ``--input``) to the files it reads (a DICOM series
    folder counts as one input); ``input_folders`` to folders whose files are all read as cases
    (nothing may be written directly into them); ``outputs`` to the files (or DICOM folders) the
    command will write. ``existing`` (e.g. ``"--overwrite"``) refuses outputs that already exist,
    naming it as the way to replace them; None leaves existing outputs to the caller.
    """
    ins, folders, outs = _expand(inputs), _expand(input_folders), _expand(outputs)
    # Look-ups by resolved path (a folder of thousands of cases stays linear): each input, each
    # folder above an input, and each case folder with the folders above it.
    by_path: dict[Path, tuple[str, Path]] = {}
    above: dict[Path, tuple[str, Path]] = {}
    for opt, path, real in ins:
        by_path.setdefault(real, (opt, path))
        for parent in real.parents:
            above.setdefault(parent, (opt, path))
    case_dirs: dict[Path, tuple[str, Path]] = {}
    for opt, path, real in folders:
        case_dirs.setdefault(real, (opt, path))
        for parent in real.parents:
            above.setdefault(parent, (opt, path))
    seen: dict[Path, tuple[str, Path]] = {}
    for out_opt, out_path, out_real in outs:
        if out_real in by_path:
            in_opt, in_path = by_path[out_real]
            given = "" if out_path == in_path else f" {in_path}"
            raise VoxdiffError(f"{out_path}: {out_opt} is the same file as {in_opt}{given} and would replace it; "
                               "choose another output name")
        for parent in out_real.parents:
            if parent in by_path:
                in_opt, in_path = by_path[parent]
                raise VoxdiffError(f"{out_path}: {out_opt} lies inside {in_opt} {in_path} and could replace "
                                   "part of it; write it elsewhere")
        if out_real in case_dirs or out_real.parent in case_dirs:
            in_opt, in_path = case_dirs.get(out_real) or case_dirs[out_real.parent]
            raise VoxdiffError(f"{out_path}: {out_opt} writes into {in_opt} {in_path}, whose files are read "
                               "as input cases; write it to another folder")
        if out_real in above:
            in_opt, in_path = above[out_real]
            raise VoxdiffError(f"{out_path}: {out_opt} holds {in_opt} {in_path} and could replace it; "
                               "write it elsewhere")
        if out_real in seen:
            other_opt, other_path = seen[out_real]
            both = f"{other_opt} and {out_opt}" if other_opt != out_opt else f"{out_opt} twice"
            raise VoxdiffError(f"{out_path}: {both} name the same file (also as {other_path}); "
                               "give each output its own name")
        seen[out_real] = (out_opt, out_path)
    if existing is not None:
        for out_opt, out_path, out_real in outs:
            if os.path.lexists(out_path):
                raise VoxdiffError(f"{out_path}: {out_opt} exists (an earlier result); pass {existing} "
                                   "or choose another name")
