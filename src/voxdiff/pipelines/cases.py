"""A pipeline over one file or a folder of cases (nnU-Net style), sharded over processes.

What every inference command does after parsing its options: plan the cases and their output
files, check every output before a model is loaded, load the model(s) once, then predict and
write each case (all of a case's outputs or none), reporting failures by case name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping, Optional

from voxdiff.cases import Part, RunSummary, plan_cases, prepare_output_folders, run_cases
from voxdiff.io.atomic import check_writable_dir
from voxdiff.io.guard import check_path_plan
from voxdiff.errors import VoxdiffError
from voxdiff.pipelines.pipeline import Pipeline, PipelineOutput, wants_dicom


def predict_cases(load: Callable[[], Pipeline], input_path: Path, outputs: Mapping[str, Optional[Path]], *,
                  options: Mapping[str, Any] | None = None, start: Optional[Path] = None, start_name: str = "start",
                  output_options: Mapping[str, str] | None = None, output_suffix: Mapping[str, str] | None = None,
                  part: Part | None = None, skip_existing: bool = False, output_format: str | None = None,
                  log: Callable[[str], None] = print, progress_factory: Callable[[], Any] | None = None,
                  inputs: Mapping[str, Any] | None = None, overwrite: bool = False
                  ) -> PipelineOutput | RunSummary:
    """Run a pipeline on ``input_path`` (a volume file or a folder of them) and write ``outputs``.

    ``outputs`` maps an output name of the task (``output``, ``std``, ``labels``, ``probs``...) to
    a file (file input) or a folder (folder input; each case keeps its input file name there, or
    gets ``<case><output_suffix[name]>``). ``load`` builds the pipeline, called only once the
    outputs were checked and only if this part has cases. ``start`` is the start volume file
    (or folder of per-case files) for tasks that take one, named ``start_name`` in messages. ``options`` go to every call
    (steps, samples, seed, eta, sampler, ...). ``output_options`` names the option behind each
    output in messages. Returns the one case's :class:`PipelineOutput` for a file input run in
    one part, else the :class:`~voxdiff.cases.RunSummary`. ``output_format`` (``auto``, ``nifti``,
    ``dicom``) decides how outputs are written (:func:`voxdiff.pipelines.pipeline.wants_dicom`).

    Before a model is loaded, the whole path plan is checked (:func:`voxdiff.io.guard.check_path_plan`):
    every planned output against every input file (``--input``, the start volumes, and ``inputs``,
    e.g. ``{"--model": checkpoint}``) and each other. An existing output file needs ``overwrite``;
    in folder mode, an existing planned output of this part needs ``skip_existing`` (kept when
    complete) or ``overwrite``.
    """
    options = dict(options or {})
    part = part or Part()
    wanted = {k: Path(v) for k, v in outputs.items() if v is not None}
    jobs, folder_mode = plan_cases(input_path, wanted, extra_inputs={start_name: start}, output_suffix=dict(output_suffix or {}))
    if folder_mode and any(wants_dicom(p, output_format) for p in wanted.values()):
        raise VoxdiffError("DICOM output is written one case at a time: give one volume file or DICOM series "
                           "folder as --input")
    names = {role: (output_options or {}).get(role, f"output '{role}'") for role in wanted}
    check_path_plan({"--input": [j.input for j in jobs],
                     f"--{start_name}": [j.extra_inputs[start_name] for j in jobs if start_name in j.extra_inputs],
                     **(inputs or {})},
                    {names[role]: [j.outputs[role] for j in jobs] for role in wanted},
                    input_folders={"--input": input_path} if folder_mode else None,
                    existing=None if overwrite or folder_mode else "--overwrite")
    if folder_mode and not (overwrite or skip_existing):
        for job in part.select(jobs):
            for role, path in job.outputs.items():
                if path.exists():
                    raise VoxdiffError(f"{path}: {names[role]} already holds this case's output (an earlier run); "
                                       "pass --skip-existing to keep complete outputs or --overwrite to replace them")
    if not folder_mode and part.count == 1:
        for path in wanted.values():
            check_writable_dir(path)
        pipe = load()
        pipe.check_outputs(wanted, int(options.get("samples", 1)), output_options)
        pipe.task.condition_vector(options.get("conditions"))   # a bad --condition fails before any work
        job = jobs[0]
        with (progress_factory() if progress_factory else _no_progress()) as prog:
            result = pipe(job.input, start=job.extra_inputs.get(start_name), progress=prog, **options)
        result.save(job.outputs, output_format=output_format)
        return result
    mine = part.select(jobs)
    pipe: Pipeline | None = None
    if mine:
        prepare_output_folders(mine)
        pipe = load()
        pipe.check_outputs({k: p for k, p in mine[0].outputs.items()}, int(options.get("samples", 1)), output_options)
        pipe.task.condition_vector(options.get("conditions"))

    def run_one(job) -> None:
        assert pipe is not None
        pipe(job.input, start=job.extra_inputs.get(start_name), **options).save(job.outputs)

    return run_cases(jobs, run_one, part=part, skip_existing=skip_existing, log=log)


class _no_progress:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False
