"""Inference over many cases: input folders, per-case output names, and sharding over processes.

``voxdiff translate`` and ``voxdiff segment`` take either one file or a folder (nnU-Net style:
every volume file directly inside it is a case, outputs get the input's file name inside the
output folder). The cases are split over parts, round-robin on the sorted names, so that N
processes (``--part-id/--num-parts``, or automatically ``RANK/WORLD_SIZE`` under torchrun)
each run a disjoint share and together run every case exactly once. Each case is seeded the
same whatever part runs it, so sharded results equal a single process's. Outputs are written
atomically, so ``--skip-existing`` can resume a pre-empted job: a file that exists is complete.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from voxdiff.errors import VoxdiffError
from voxdiff.io import SUPPORTED_SUFFIXES, volume_shape
from voxdiff.io.atomic import case_name, check_writable_dir, ensure_out_dir, full_suffix, volume_files_by_case


@dataclass
class Part:
    """Which share of the cases this process runs (``index`` in ``0..count-1``) and why."""

    index: int = 0
    count: int = 1
    source: str = "single process"

    def select(self, items: Sequence) -> list:
        """This part's items: every ``count``-th one starting at ``index`` (balanced, deterministic)."""
        return list(items)[self.index::self.count]


@dataclass
class CaseJob:
    """One case: its name, input file, optional per-case extra inputs and its output files."""

    name: str
    input: Path
    outputs: dict[str, Path]
    extra_inputs: dict[str, Path] = field(default_factory=dict)


def resolve_part(part_id: Optional[int], num_parts: Optional[int]) -> Part:
    """The part from ``--part-id/--num-parts``, else from torchrun's ``RANK``/``WORLD_SIZE``, else 0 of 1."""
    if (part_id is None) != (num_parts is None):
        raise VoxdiffError("give --part-id and --num-parts together (e.g. --part-id 0 --num-parts 4)")
    if num_parts is not None:
        if num_parts < 1:
            raise VoxdiffError(f"--num-parts must be >= 1, got {num_parts}")
        if not 0 <= part_id < num_parts:
            raise VoxdiffError(f"--part-id must lie in 0..{num_parts - 1} for --num-parts {num_parts}, got {part_id}")
        return Part(int(part_id), int(num_parts), "--part-id/--num-parts")
    world = os.environ.get("WORLD_SIZE")
    if world is not None and int(world) > 1:
        rank = int(os.environ.get("RANK", "0"))
        return Part(rank, int(world), "torchrun")
    return Part()


def list_cases(folder: Path) -> list[Path]:
    """The volume files directly inside ``folder``, sorted by name; an error if there are none."""
    files = sorted(volume_files_by_case(folder, SUPPORTED_SUFFIXES).values(), key=lambda p: p.name)
    if not files:
        raise VoxdiffError(f"{folder}: no volume files in this folder (looked for {', '.join(SUPPORTED_SUFFIXES)})")
    return files


def _find_case_file(folder: Path, name: str) -> Optional[Path]:
    for suffix in SUPPORTED_SUFFIXES:
        cand = folder / f"{name}{suffix}"
        if cand.is_file():
            return cand
    return None


def plan_cases(input_path: Path, outputs: dict[str, Optional[Path]], *,
               extra_inputs: dict[str, Optional[Path]] | None = None,
               output_suffix: dict[str, str] | None = None) -> tuple[list[CaseJob], bool]:
    """Jobs for one input file or a folder of them; returns ``(jobs, folder_mode)``.

    ``outputs`` maps an output role (e.g. ``output``, ``uncertainty``) to the path the user
    gave: a file for a file input, a folder (created if needed) for a folder input, where
    each case's output takes the input's file name (or ``<case><output_suffix[role]>``).
    ``extra_inputs`` (e.g. pre-segmentations) are a file, or for a folder input a folder
    holding a file of the same case name (any volume suffix). Nothing is written here.
    """
    input_path = Path(input_path)
    extra_inputs = {k: Path(v) for k, v in (extra_inputs or {}).items() if v is not None}
    outputs = {k: Path(v) for k, v in outputs.items() if v is not None}
    output_suffix = output_suffix or {}
    if not input_path.exists():
        raise VoxdiffError(f"{input_path}: no such file or folder")
    from voxdiff.io.dicom import is_dicom_folder

    if not input_path.is_dir() or is_dicom_folder(input_path):  # a DICOM series folder is one case
        for role, path in outputs.items():
            if path.is_dir():
                raise VoxdiffError(f"{path}: --{role} is a folder, but --input is one file; give a file name")
        return [CaseJob(case_name(input_path), input_path, outputs, extra_inputs)], False

    files = list_cases(input_path)
    for role, path in outputs.items():
        if path.exists() and not path.is_dir():
            raise VoxdiffError(f"{path}: --input is a folder, so --{role} must be a folder too (this is a file)")
        if full_suffix(path).lower() in SUPPORTED_SUFFIXES:
            raise VoxdiffError(f"{path}: --input is a folder, so --{role} must be a folder, not a volume file name")
    for role, path in extra_inputs.items():
        if not path.is_dir():
            raise VoxdiffError(f"{path}: --input is a folder, so --{role} must be a folder of per-case files")
    resolved = [p.resolve() for p in outputs.values()]
    if input_path.resolve() in resolved:
        raise VoxdiffError(f"{input_path}: the output folder must differ from the input folder "
                           f"(outputs take the inputs' file names)")
    if len(set(resolved)) != len(resolved):
        raise VoxdiffError("each output role needs its own folder (outputs take the inputs' file names)")
    jobs = []
    for f in files:
        name = case_name(f)
        outs = {role: path / (f"{name}{output_suffix[role]}" if role in output_suffix else f.name)
                for role, path in outputs.items()}
        extras = {}
        for role, folder in extra_inputs.items():
            found = _find_case_file(folder, name)
            # A missing per-case file fails that case (named), not the whole run.
            extras[role] = found if found is not None else folder / f.name
        jobs.append(CaseJob(name, f, outs, extras))
    return jobs, True


def prepare_output_folders(jobs: Sequence[CaseJob]) -> None:
    """Create the output folders of folder-mode jobs and check they are writable."""
    for folder in sorted({p.parent for j in jobs for p in j.outputs.values()}):
        ensure_out_dir(folder)
        if not os.access(folder, os.W_OK):
            raise VoxdiffError(f"{folder}: output folder is not writable")
    for j in jobs[:1]:
        for p in j.outputs.values():
            check_writable_dir(p)


def incomplete_outputs(job: CaseJob) -> list[Path]:
    """The outputs of ``job`` that are not a complete, readable volume of its input's grid (for
    ``--skip-existing``: an output cut short by a killed job or a full disk is redone)."""
    try:
        shape = volume_shape(job.input)
    except (OSError, VoxdiffError):
        return []  # the case itself fails, with its own message, when run
    bad = []
    for path in job.outputs.values():
        try:
            if volume_shape(path, read_data=True) != shape:
                bad.append(path)
        except (OSError, VoxdiffError):
            bad.append(path)
    return bad


@dataclass
class RunSummary:
    """What one part did: counts and the failures (case name -> message)."""

    part: Part
    total: int
    selected: int
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0


def run_cases(jobs: Sequence[CaseJob], run_one: Callable[[CaseJob], Any], *, part: Part,
              skip_existing: bool = False, log: Callable[[str], None] = print) -> RunSummary:
    """Run this part's share of ``jobs``; a failing case is reported and the others still run.

    Raises :class:`VoxdiffError` at the end (exit code 2) naming every failed case.
    """
    mine = part.select(jobs)
    summary = RunSummary(part=part, total=len(jobs), selected=len(mine))
    t_all = time.perf_counter()
    width = len(str(len(mine)))
    for i, job in enumerate(mine, 1):
        prefix = f"[{i:>{width}}/{len(mine)}] {job.name}"
        if skip_existing and all(p.exists() for p in job.outputs.values()):
            broken = incomplete_outputs(job)
            if not broken:
                summary.skipped.append(job.name)
                log(f"{prefix}: outputs exist, skipped")
                continue
            log(f"{prefix}: {broken[0]} is not a complete volume of the input's shape; redoing the case")
        t0 = time.perf_counter()
        try:
            run_one(job)
        except VoxdiffError as exc:
            summary.failed[job.name] = " ".join(str(exc).split())
            log(f"{prefix}: FAILED: {summary.failed[job.name]}")
            continue
        summary.done.append(job.name)
        log(f"{prefix} -> {job.outputs.get('output', next(iter(job.outputs.values()), ''))} "
            f"({time.perf_counter() - t0:.1f} s)")
    summary.seconds = time.perf_counter() - t_all
    where = f"part {part.index + 1}/{part.count} ({part.source}): " if part.count > 1 else ""
    log(f"{where}{len(summary.done)} written, {len(summary.skipped)} skipped, {len(summary.failed)} failed "
        f"of {summary.selected} case(s) (of {summary.total}) in {summary.seconds:.1f} s")
    if summary.failed:
        names = "; ".join(f"{k}: {v}" for k, v in summary.failed.items())
        raise VoxdiffError(f"{len(summary.failed)} of {summary.selected} case(s) failed: {names}")
    return summary
