"""``voxdiff bench memory`` / ``voxdiff bench sampling``: training-step memory and sampling speed."""

from __future__ import annotations

import datetime
import json
import math
import platform
from pathlib import Path
from typing import Any, Optional

import typer
from rich.markup import escape

from voxdiff.cli.app import bench_app, console, say
from voxdiff.cli.tables import FitTable
from voxdiff.errors import VoxdiffError
from voxdiff.io.guard import check_path_plan


def _int_list(text: str, what: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise VoxdiffError(f"{what} '{text}' must be a comma-separated list of positive integers")
    return values


def _names(text: str | None) -> list[str]:
    return [n.strip() for n in (text or "").split(",") if n.strip()]


def _check_device(device: str) -> str:
    """A bench device: ``cpu`` or an existing CUDA device (``auto`` means the GPU when there is one)."""
    import torch

    from voxdiff.config import check_device

    device = check_device(device)
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "mps":
        raise VoxdiffError("--device mps: the memory benchmarks measure CPU or CUDA only")
    return device


def _methods(methods: str | None, config: Path | None, overrides: list[str], base: int, default: tuple[str, ...]):
    from voxdiff.bench.methods import method_from_config, resolve_methods

    names = _names(methods) if methods is not None else ([] if config is not None else list(default))
    out = resolve_methods(names, base)
    if config is not None:
        out.append(method_from_config(str(config), overrides))
    if not out:
        raise VoxdiffError("nothing to benchmark: give --methods or --config")
    return out


def _environment() -> dict[str, Any]:
    from voxdiff.train.trainer import environment_summary

    return {**environment_summary(), "python": platform.python_version(), "machine": platform.machine(),
            "date": datetime.datetime.now().isoformat(timespec="seconds")}


def _fmt(value: Any, spec: str = ".1f") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return format(value, spec)


def _write_json(path: Path, payload: dict) -> None:
    from voxdiff.io import atomic_write_text

    atomic_write_text(path, json.dumps(payload, indent=2) + "\n")


@bench_app.command("memory")
def memory(
    methods: Optional[str] = typer.Option(None, "--methods", help="Comma-separated: full3d, full3d-sdpa, patch, "
                                          "ppdm2, ppdm4, ppdm4w, ppdm2-nograd, ppdm4-nograd, ppdm2-inv, idm, "
                                          "idm-stored (default: full3d,patch,ppdm2,ppdm4, or none with --config)."),
    sizes: str = typer.Option("64,96,128", "--sizes", help="Cubic volume edges, comma-separated."),
    base: int = typer.Option(32, "--base", help="Base width (first level's channels) of every built-in method."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda."),
    repeats: int = typer.Option(1, "--repeats", help="Measured steps after the warm-up step (time = median)."),
    config: Optional[Path] = typer.Option(None, "--config", help="Also measure the model of this training config."),
    set_: list[str] = typer.Option([], "--set", "-s", help="Override a value of --config: key.sub=value."),
    threads: Optional[int] = typer.Option(None, "--threads", help="torch CPU threads per worker (default: torch's)."),
    timeout: Optional[float] = typer.Option(None, "--timeout", help="Give up on one configuration after this many seconds."),
    mem_limit: Optional[float] = typer.Option(None, "--mem-limit-gib", help="CPU: fail a configuration that needs "
                                              "more than this many GiB instead of risking the OOM killer."),
    depths: Optional[str] = typer.Option(None, "--depths", help="Depth study, e.g. 1,2: rebuild every backbone with "
                                         "2d levels and d blocks per level (rows NAME@dD, growth vs d=1) "
                                         "(default: the methods as they are)."),
    precisions: Optional[str] = typer.Option(None, "--precisions", help="Comma-separated autocast precisions: "
                                             "fp32, bf16, fp16 (default: each method's own, fp32 for built-ins)."),
    checkpointing: bool = typer.Option(False, "--checkpointing", help="Also measure every unet/monai-backbone "
                                       "method with gradient_checkpointing (rows NAME+ckpt)."),
    batch: int = typer.Option(1, "--batch", help="Crops per micro-batch."),
    accumulate: int = typer.Option(1, "--accumulate", help="Micro-batches per optimizer step (grad accumulation)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write all results as JSON."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Write a PNG: memory and step time vs size (log scales)."),
    markdown: Optional[Path] = typer.Option(None, "--markdown", help="Write the table as markdown (for BENCHMARKS.md)."),
) -> None:
    """Peak memory and time of ONE training step (forward, backward, AdamW) per method and size.

    Each configuration runs in a fresh process, batch 1 (see --batch, --accumulate), random data,
    after one warm-up step.
    Memory is measured above the resident model and batch: peak RSS on CPU, max_memory_allocated
    on CUDA. The patch method trains on crops of half the volume edge (as PatchDDM does).

    Example: [cyan]voxdiff bench memory --methods full3d,patch,ppdm2,ppdm4 --sizes 64,96,128 --json mem.json --plot mem.png[/]

    Example: [cyan]voxdiff bench memory --config my.yaml --sizes 96[/]

    Example (depth study): [cyan]voxdiff bench memory --methods idm,idm-stored --depths 1,2 --sizes 96[/]

    Example (training options): [cyan]voxdiff bench memory --methods ppdm2 --precisions fp32,bf16 --checkpointing[/]
    """
    from voxdiff.bench.memory import add_growth, add_ratios, memory_markdown, plot_memory, run_memory_benchmark
    from voxdiff.bench.methods import PRECISIONS, expand_methods

    size_list = _int_list(sizes, "--sizes")
    if repeats < 1:
        raise VoxdiffError(f"--repeats must be >= 1, got {repeats}")
    if base < 1:
        raise VoxdiffError(f"--base must be >= 1, got {base}")
    if batch < 1:
        raise VoxdiffError(f"--batch must be >= 1 (crops per micro-batch), got {batch}")
    if accumulate < 1:
        raise VoxdiffError(f"--accumulate must be >= 1 (micro-batches per optimizer step), got {accumulate}")
    depth_list = None if depths is None else _int_list(depths, "--depths")
    precision_list = None
    if precisions is not None:
        precision_list = _names(precisions)
        bad = [p for p in precision_list if p not in PRECISIONS]
        if bad or not precision_list:
            raise VoxdiffError(f"--precisions '{precisions}': use a comma-separated subset of "
                               f"{', '.join(PRECISIONS)}")
    device = _check_device(device)
    for path in (json_out, plot, markdown):
        if path is not None:
            from voxdiff.io import check_writable_dir

            check_writable_dir(path)
    check_path_plan({"--config": config}, {"--json": json_out, "--plot": plot, "--markdown": markdown})
    chosen = _methods(methods, config, list(set_), base, ("full3d", "patch", "ppdm2", "ppdm4"))
    chosen, notes = expand_methods(chosen, depths=depth_list, precisions=precision_list, checkpointing=checkpointing)
    for note in notes:
        console.print(f"[yellow]note[/]: {note}", highlight=False)
    if not chosen:
        raise VoxdiffError("nothing to benchmark after expanding the variants")
    console.print(f"[bold]bench memory[/]: {len(chosen)} configuration(s) x {len(size_list)} size(s) on {device}, "
                  "one fresh process each")

    def report(r: dict) -> None:
        from voxdiff.bench.memory import variant_label

        label = r["method"] if variant_label(r) == "fp32" else f"{r['method']} ({variant_label(r)})"
        if "error" in r:
            console.print(f"  {label} @ {r['size']}^3: [red]failed[/] ({escape(str(r['error']))})", highlight=False)
        else:
            console.print(f"  {label} @ {r['size']}^3: {r['peak_mib']:.0f} MiB, {r['step_s']:.2f} s/step",
                          highlight=False)

    results = run_memory_benchmark(chosen, size_list, base=base, device=device, repeats=repeats,
                                   threads=threads, timeout=timeout, mem_limit_gib=mem_limit, batch=batch,
                                   accumulate=accumulate, on_result=report)
    add_ratios(results)
    add_growth(results)
    console.print(memory_table(results))
    # Variants share a name across precisions: key the method table by name and precision.
    payload = {"benchmark": "memory", "environment": _environment(), "device": device, "base": base,
               "sizes": size_list, "repeats": repeats, "threads": threads, "mem_limit_gib": mem_limit,
               "depths": depth_list, "precisions": precision_list, "checkpointing": checkpointing,
               "batch": batch, "accumulate": accumulate, "notes": notes,
               "methods": {_method_key(m, precision_list): m.to_dict() for m in chosen},
               "results": results}
    if json_out is not None:
        _write_json(json_out, payload)
        say(f"wrote {json_out}")
    if markdown is not None:
        from voxdiff.io import atomic_write_text

        text = memory_markdown(results) + "\n"
        if notes:
            text += "\n" + "\n".join(f"Note: {n}." for n in notes) + "\n"
        atomic_write_text(markdown, text)
        say(f"wrote {markdown}")
    if plot is not None:
        if any("error" not in r for r in results):
            plot_memory(results, plot)
            say(f"wrote {plot}")
        else:
            console.print("[yellow]no successful measurement: plot not written[/]")


def _method_key(method, precisions: list[str] | None) -> str:
    return method.name if precisions is None else f"{method.name} [{method.precision}]"


def memory_table(results: list[dict]) -> FitTable:
    """Table of memory-benchmark results (variant and x d1 columns only when used); numbers never cut."""
    from voxdiff.bench.memory import _has_variants, variant_label

    variants = _has_variants(results)
    depths = any(r.get("depth") is not None for r in results)
    batch = "batch 1" if not variants else "per training setting"
    t = FitTable(title=f"one training step, {batch}: peak MiB above model + batch, ratios to full3d",
                 key_columns=2 if variants else 1)
    t.add_column("method")
    if variants:
        t.add_column("variant")
    cols = ["volume", "crop", "params", "MiB"] + (["x d1"] if depths else []) + ["/full3d", "saved", "s/step",
                                                                                 "/full3d "]
    for col in cols:
        t.add_column(col, numeric=True)
    for r in results:
        lead = [r["method"]] + ([variant_label(r)] if variants else []) + [f"{r['size']}^3"]
        if "error" in r:
            t.add_row(*lead, "", "", "[red]failed[/]", *[""] * (len(cols) - 4))
            continue
        star = "*" if r.get("ratio_to", "full3d") != "full3d" else ""
        t.add_row(*lead, f"{r['train_size']}^3", f"{r['params'] / 1e6:.2f}M", _fmt(r["peak_mib"], ".0f"),
                  *([_fmt(r.get("growth"), ".3f")] if depths else []), _fmt(r.get("mem_ratio"), ".3f") + star,
                  _fmt(r.get("saved_mib"), ".0f"), _fmt(r["step_s"], ".2f"), _fmt(r.get("time_ratio"), ".2f") + star)
    if any(r.get("ratio_to", "full3d") != "full3d" for r in results if "error" not in r):
        t.caption = "* ratio to full3d-sdpa: full3d not measured or failed in that setting"
    return t


@bench_app.command("sampling")
def sampling(
    methods: Optional[str] = typer.Option(None, "--methods", help="Comma-separated methods (as for bench memory) "
                                          "[default: full3d,patch,ppdm2,ppdm4, or none with --config]."),
    size: Optional[str] = typer.Option(None, "--size", help="Volume size: N (cubic) or X,Y,Z [default: 96]."),
    input_: Optional[Path] = typer.Option(None, "--input", help="Time on this volume's grid instead of --size."),
    steps_per_method: Optional[str] = typer.Option(
        None, "--steps-per-method",
        help="Override steps, e.g. full3d-ddpm=1000,full3d-ddim=50,patch=50,ppdm=5 (0 skips). Defaults: "
             "DDPM methods ddpm=1000 and ddim=50, PPDM 5."),
    max_steps: int = typer.Option(10, "--max-steps", help="Time at most this many steps; longer chains are extrapolated."),
    base: int = typer.Option(32, "--base", help="Base width of every built-in method."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda."),
    config: Optional[Path] = typer.Option(None, "--config", help="Also time the model of this training config."),
    set_: list[str] = typer.Option([], "--set", "-s", help="Override a value of --config: key.sub=value."),
    threads: Optional[int] = typer.Option(None, "--threads", help="torch CPU threads (default: torch's)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the random weights and noise."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write all results as JSON."),
    markdown: Optional[Path] = typer.Option(None, "--markdown", help="Write the table as markdown (for BENCHMARKS.md)."),
) -> None:
    """Seconds to sample one whole volume per method at its standard step count (random weights).

    Speed does not depend on the weights. Chains longer than --max-steps are timed on their
    first steps and extrapolated (marked in the table). Ratios are to PPDM r=2 when present.

    Example: [cyan]voxdiff bench sampling --size 120,120,90 --json sampling.json[/]
    """
    from voxdiff.bench.sampling import (add_sampling_ratios, parse_steps, plan_runs, run_sampling_benchmark,
                                        sampling_markdown)

    device = _check_device(device)
    if max_steps < 1:
        raise VoxdiffError(f"--max-steps must be >= 1, got {max_steps}")
    if input_ is not None and size is not None:
        raise VoxdiffError("give either --size or --input, not both")
    for path in (json_out, markdown):
        if path is not None:
            from voxdiff.io import check_writable_dir

            check_writable_dir(path)
    check_path_plan({"--config": config, "--input": input_}, {"--json": json_out, "--markdown": markdown})
    steps = parse_steps(steps_per_method)
    chosen = _methods(methods, config, list(set_), base, ("full3d", "patch", "ppdm2", "ppdm4"))
    plan_runs(chosen, steps)  # refuse unknown --steps-per-method keys before any work
    source, shape = None, None
    if input_ is not None:
        import numpy as np

        from voxdiff.intensity import percentile_scaler
        from voxdiff.io import load_volume

        vol = load_volume(input_, role="input")
        arr = np.asarray(vol.array, dtype=np.float32)
        source = percentile_scaler(arr, 0.5, 99.5).forward(arr) if arr.max() > arr.min() else np.zeros_like(arr)
        shape = list(arr.shape)
    else:
        shape = _int_list(size or "96", "--size")
        shape = shape * 3 if len(shape) == 1 else shape
        if len(shape) != 3:
            raise VoxdiffError(f"--size '{size}' must be N or X,Y,Z")
    console.print(f"[bold]bench sampling[/]: whole volume {'x'.join(map(str, shape))} on {device}")

    def report(r: dict) -> None:
        if "error" in r:
            console.print(f"  {escape(str(r['run']))}: [red]failed[/] ({escape(str(r['error']))})", highlight=False)
        else:
            extra = f" (extrapolated from {r['measured_steps']} steps)" if r["extrapolated"] else ""
            console.print(f"  {r['run']}: {r['steps']} steps, {r['seconds']:.1f} s{extra}", highlight=False)

    import torch

    results = run_sampling_benchmark(chosen, shape, source=None if source is None else torch.from_numpy(source),
                                     steps=steps, device=device, max_steps=max_steps, seed=seed, threads=threads,
                                     on_result=report)
    ref = add_sampling_ratios(results)
    console.print(sampling_table(results, ref))
    if json_out is not None:
        _write_json(json_out, {"benchmark": "sampling", "environment": _environment(), "device": device,
                               "shape": shape, "base": base, "threads": threads, "max_steps": max_steps,
                               "reference": ref, "results": results})
        say(f"wrote {json_out}")
    if markdown is not None:
        from voxdiff.io import atomic_write_text

        atomic_write_text(markdown, sampling_markdown(results, ref) + "\n")
        say(f"wrote {markdown}")


def sampling_table(results: list[dict], reference: str | None) -> FitTable:
    """Table of sampling-benchmark results; numbers never cut."""
    t = FitTable(title="sampling one whole volume, random weights")
    t.add_column("run")
    for col in ("steps", "s/step", "s/volume", f"/{reference or 'PPDM'}", "MiB"):
        t.add_column(col, numeric=True)
    t.add_column("note")
    for r in results:
        if "error" in r:
            t.add_row(r["run"], str(r["steps"]), "", "", "", "", f"[red]{escape(r['error'][:50])}[/]")
            continue
        note = f"extrap. from {r['measured_steps']}" if r["extrapolated"] else "measured"
        t.add_row(r["run"], str(r["steps"]), _fmt(r["sec_per_step"], ".3f"), _fmt(r["seconds"], ".1f"),
                  _fmt(r.get("ratio_to_ppdm"), ".1f"), _fmt(r["peak_mib"], ".0f"), note)
    return t
