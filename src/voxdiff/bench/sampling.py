"""Time to sample one whole volume per method at its standard number of steps.

Weights are randomly initialised: the cost of a step does not depend on them. Every step of
a sampler evaluates the network once on the same grid, so a chain of ``K`` steps may be timed
on its first ``k < K`` steps and extrapolated linearly (reported as such). Sampling goes
through :func:`voxdiff.tasks.inference.predict_volume`, the path ``voxdiff translate`` uses
(padding to the network's multiple, coordinate channels for the patch baseline).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from voxdiff.bench.methods import Method
from voxdiff.errors import VoxdiffError


@dataclass
class SamplingRun:
    """One timed chain: ``method`` sampled with ``sampler`` for ``steps`` steps at ``eta``."""

    method: Method
    sampler: str
    steps: int
    eta: float | None

    @property
    def label(self) -> str:
        """``method`` for single-sampler methods, else ``method-sampler``."""
        return self.method.name if len(self.method.samplers) <= 1 else f"{self.method.name}-{self.sampler}"


def parse_steps(text: str | None) -> dict[str, int]:
    """``"full3d-ddpm=1000,ppdm=5"`` -> ``{"full3d-ddpm": 1000, "ppdm": 5}``."""
    out: dict[str, int] = {}
    for part in (text or "").split(","):
        part = part.strip()
        if not part:
            continue
        key, sep, value = part.partition("=")
        try:
            n = int(value)
        except ValueError:
            n = -1
        if not sep or not key.strip() or n < 0:
            raise VoxdiffError(f"--steps-per-method entry '{part}' must look like METHOD[-SAMPLER]=STEPS "
                               "with STEPS >= 0 (0 skips it)")
        out[key.strip()] = n
    return out


def plan_runs(methods: Sequence[Method], steps: dict[str, int] | None = None) -> list[SamplingRun]:
    """Each method's samplers at their standard steps, with ``steps`` overrides.

    A key may name a run (``full3d-ddim``), a method (``patch``: all its samplers) or a method
    prefix (``ppdm``: every PPDM variant); the most specific key wins; 0 skips the run.
    """
    steps = dict(steps or {})
    used: set[str] = set()
    runs = []
    for m in methods:
        for sampler, (k, eta) in m.samplers.items():
            run = SamplingRun(m, sampler, int(k), eta)
            for key in (f"{m.name}-{sampler}", m.name):
                if key in steps:
                    run.steps = steps[key]
                    used.add(key)
                    break
            else:
                for key in steps:
                    if m.name.startswith(key):
                        run.steps = steps[key]
                        used.add(key)
                        break
            if run.steps > 0:
                runs.append(run)
    unknown = [k for k in steps if k not in used]
    if unknown:
        raise VoxdiffError(f"--steps-per-method names {', '.join(unknown)}, which match no benchmarked method/sampler")
    return runs


def _sync(device) -> None:
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def time_run(run: SamplingRun, source, *, max_steps: int = 10, seed: int = 0) -> dict[str, Any]:
    """Seconds to sample ``source``'s whole volume with ``run`` (extrapolated above ``max_steps``).

    ``source`` is a normalised (1, 1, X, Y, Z) tensor on the device to use.
    """
    import torch

    from voxdiff.bench.memory import MIB, _CpuMeter, _CudaMeter
    from voxdiff.tasks.inference import predict_volume

    device = source.device
    torch.manual_seed(seed)
    task = run.method.build().to(device).eval()
    if len(task.input_roles) != 1:
        raise VoxdiffError(f"{run.method.name}: the sampling benchmark handles one-input tasks only "
                           f"(this task needs {', '.join(task.input_roles) or 'none'})")
    inputs = {task.input_roles[0]: source}
    k = min(run.steps, max(1, int(max_steps)))

    def sample(n: int) -> None:
        g = torch.Generator().manual_seed(seed)
        predict_volume(task, inputs, steps=n, eta=run.eta, sampler=run.sampler, generator=g,
                       pad_value=float(source.min()))

    sample(1)  # warm-up: first-call allocations, kernel selection
    meter = _CudaMeter(device) if device.type == "cuda" else _CpuMeter()
    meter.reset()
    _sync(device)
    t0 = time.perf_counter()
    sample(k)
    _sync(device)
    measured = time.perf_counter() - t0
    peak = max(0, meter.peak() - meter.baseline)  # in-process: approximate, never below zero
    seconds = measured / k * run.steps
    return {"run": run.label, "method": run.method.name, "sampler": run.sampler, "steps": run.steps,
            "eta": run.eta, "measured_steps": k, "measured_s": measured, "seconds": seconds,
            "sec_per_step": measured / k, "extrapolated": k < run.steps, "shape": list(source.shape[2:]),
            "device": str(device), "peak_mib": peak / MIB, "memory_method": meter.method,
            "description": run.method.description}


def add_sampling_ratios(results: list[dict[str, Any]]) -> str | None:
    """Add ``ratio_to_ppdm`` (seconds / the reference PPDM's) in place; returns the reference run."""
    ppdm = [r for r in results if r["method"].startswith("ppdm") and "error" not in r]
    ref = next((r for r in ppdm if r["method"] == "ppdm2"), ppdm[0] if ppdm else None)
    if ref is None:
        return None
    for r in results:
        if "error" not in r:
            r["ratio_to_ppdm"] = r["seconds"] / ref["seconds"]
    return ref["run"]


def run_sampling_benchmark(methods: Sequence[Method], shape: Sequence[int] | None = None, *, source=None,
                           steps: dict[str, int] | None = None, device: str = "cpu", max_steps: int = 10,
                           seed: int = 0, threads: int | None = None,
                           on_result: Callable[[dict], None] | None = None) -> list[dict[str, Any]]:
    """Time every planned run on a random volume of ``shape`` (or on ``source``, (X, Y, Z) in [-1, 1])."""
    import torch

    if threads:
        torch.set_num_threads(int(threads))
    if source is None:
        if shape is None:
            raise VoxdiffError("give a volume shape or a source volume to the sampling benchmark")
        g = torch.Generator().manual_seed(seed)
        source = torch.rand((1, 1, *[int(s) for s in shape]), generator=g) * 2 - 1
    else:
        source = torch.as_tensor(source, dtype=torch.float32)
        source = source.reshape(1, 1, *source.shape[-3:])
    source = source.to(device)
    results = []
    for run in plan_runs(methods, steps):
        try:
            res = time_run(run, source, max_steps=max_steps, seed=seed)
        except (RuntimeError, VoxdiffError) as exc:  # e.g. out of memory: report and go on
            res = {"run": run.label, "method": run.method.name, "steps": run.steps,
                   "error": str(exc).splitlines()[0]}
        results.append(res)
        if on_result is not None:
            on_result(res)
    add_sampling_ratios(results)
    return results


def sampling_markdown(results: Sequence[dict[str, Any]], reference: str | None) -> str:
    """Markdown table of sampling results (for BENCHMARKS.md)."""
    lines = [f"| run | steps | s / step | s / volume | x {reference or 'PPDM'} | note |",
             "|---|---:|---:|---:|---:|---|"]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['run']} | {r['steps']} | | | | failed: {r['error']} |")
            continue
        note = f"extrapolated from {r['measured_steps']} steps" if r["extrapolated"] else "measured"
        ratio = "-" if r.get("ratio_to_ppdm") is None else f"{r['ratio_to_ppdm']:.1f}"
        lines.append(f"| {r['run']} | {r['steps']} | {r['sec_per_step']:.2f} | {r['seconds']:.1f} | {ratio} | {note} |")
    return "\n".join(lines)
