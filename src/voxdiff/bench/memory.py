"""Peak memory and time of ONE training step per method and volume size, each in a fresh process.

What is measured is what trains: the task is built by :func:`voxdiff.tasks.build_task` from
its model config and one step is, as in :meth:`voxdiff.train.trainer.Trainer.train_step`
(minus the EMA copy), ``accumulate`` micro-batches of ``batch`` random crops (data in [-1, 1];
the same crops each micro-batch, fresh noise and timesteps) each run as ``loss = task(batch,
generators)`` under the method's precision autocast and ``scaler.scale(loss / accumulate)
.backward()``, then gradient clipping and one ``AdamW.step()`` (the ``GradScaler`` is active for
fp16 only). A warm-up step (which also allocates the AdamW state) precedes the measured step(s).

Memory is reported *above the resident model and batch*, i.e. activations + gradients +
optimizer state + workspace:

* CPU: peak resident set size (``VmHWM`` of ``/proc/self/status``, reset before each measured
  step by writing ``5`` to ``/proc/self/clear_refs``) minus the RSS just before the warm-up
  step. The worker runs with ``MALLOC_MMAP_THRESHOLD_`` fixed so freed tensors go back to the
  OS and the RSS follows live memory. Without ``clear_refs``, ``ru_maxrss`` is used (the peak
  then covers the warm-up step too).
* CUDA: ``torch.cuda.max_memory_allocated()`` after ``reset_peak_memory_stats()`` minus
  ``memory_allocated()`` before the warm-up step; times from CUDA events.

``saved_mib`` (the bytes autograd saves for backward in one micro-batch forward, allocator
independent, see :func:`voxdiff.nets.memory.saved_activation_bytes`) is reported as a
cross-check; tensors saved inside a gradient-checkpointed region are not saved in the forward
and are not counted (backward recomputes them, so they still take memory then).
``param_mib`` / ``grad_mib`` / ``optim_state_mib`` (parameters, their gradients and the AdamW
moments, in bytes of the tensors) break the peak down: gradients and optimizer state are part
of it, the parameters are not (they are in the baseline).

The worker is ``python -m voxdiff.bench.memory --worker '<json>'`` (internal); users run
``voxdiff bench memory``.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from voxdiff.bench.methods import Method
from voxdiff.errors import VoxdiffError

RESULT_PREFIX = "VOXDIFF_BENCH_RESULT "
MIB = 1024.0 ** 2
# Fixed mmap threshold: allocations above it are mmapped and unmapped on free, so RSS tracks
# live tensors instead of glibc's retained heap (setting it also disables the dynamic threshold).
WORKER_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072"}


# ---------------------------------------------------------------------------------- worker side
def _rss_kib(field: str) -> int | None:
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return None
    m = re.search(rf"^{field}:\s+(\d+)\s+kB", text, re.MULTILINE)
    return int(m.group(1)) if m else None


def _reset_hwm() -> bool:
    """Reset the process's peak RSS to its current RSS; False where the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


def _maxrss_kib() -> int:
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(r // 1024) if sys.platform == "darwin" else int(r)  # bytes on macOS, KiB on Linux


class _CpuMeter:
    """Peak RSS above a baseline; wall-clock timing."""

    def __init__(self) -> None:
        self.clear_refs = _reset_hwm() and _rss_kib("VmHWM") is not None
        self.method = "VmHWM after clear_refs" if self.clear_refs else "ru_maxrss"
        self.baseline = self.current()

    def current(self) -> int:
        rss = _rss_kib("VmRSS")
        return rss * 1024 if rss is not None else _maxrss_kib() * 1024

    def reset(self) -> None:
        if self.clear_refs:
            _reset_hwm()

    def peak(self) -> int:
        kib = _rss_kib("VmHWM") if self.clear_refs else _maxrss_kib()
        return int(kib) * 1024

    def timed(self, fn: Callable[[], None]) -> float:
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0


class _CudaMeter:
    """``max_memory_allocated`` above a baseline; CUDA-event timing."""

    method = "torch.cuda.max_memory_allocated"

    def __init__(self, device) -> None:
        import torch

        self.torch, self.device = torch, device
        torch.cuda.synchronize(device)
        self.baseline = torch.cuda.memory_allocated(device)

    def current(self) -> int:
        return self.torch.cuda.memory_allocated(self.device)

    def reset(self) -> None:
        self.torch.cuda.synchronize(self.device)
        self.torch.cuda.reset_peak_memory_stats(self.device)

    def peak(self) -> int:
        self.torch.cuda.synchronize(self.device)
        return self.torch.cuda.max_memory_allocated(self.device)

    def timed(self, fn: Callable[[], None]) -> float:
        cuda = self.torch.cuda
        start, end = cuda.Event(enable_timing=True), cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1000.0


def synthetic_batch(task, size: int | Sequence[int], volume: int | Sequence[int], device, generator,
                    batch: int = 1) -> dict:
    """A batch of ``batch`` random crops of edge ``size``, each taken from a volume of edge ``volume``.

    Image roles are uniform in [-1, 1]; label roles integer classes; ``location``/``shape``
    place the crop (used by coordinate channels).
    """
    import torch

    size = (size,) * 3 if isinstance(size, int) else tuple(size)
    volume = (volume,) * 3 if isinstance(volume, int) else tuple(volume)
    n = int(batch)
    out: dict[str, torch.Tensor] = {}
    for role in task.roles:
        if role in task.label_roles:
            k = int(getattr(task, "data_channels", 2))
            out[role] = torch.randint(0, k, (n, 1, *size), generator=generator).float()
        else:
            out[role] = torch.rand((n, 1, *size), generator=generator) * 2 - 1
    out = {k: v.to(device) for k, v in out.items()}
    locs = [[int(torch.randint(0, v - s + 1, (1,), generator=generator)) for s, v in zip(size, volume)]
            for _ in range(n)]
    out["location"] = torch.tensor(locs, device=device)
    out["shape"] = torch.tensor([list(volume)] * n, device=device)
    return out


def _row_keys(method: Method, batch: int, accumulate: int) -> dict[str, Any]:
    """What identifies a configuration in a result row (also on error rows, for grouping)."""
    return {"base_method": method.family_name, "depth": method.depth, "precision": method.precision,
            "checkpointing": method.checkpointing, "batch": int(batch), "accumulate": int(accumulate)}


def _check_training_options(batch: int, accumulate: int) -> None:
    if int(batch) < 1:
        raise VoxdiffError(f"batch (crops per micro-batch) must be >= 1, got {batch}")
    if int(accumulate) < 1:
        raise VoxdiffError(f"accumulate (micro-batches per optimizer step) must be >= 1, got {accumulate}")


def _limit_address_space(gib: float) -> None:
    """Cap this process's address space at its current size + ``gib`` GiB.

    A configuration that needs more fails with an allocation error in its own process instead
    of waking the kernel's OOM killer, which on a shared machine may pick another process.
    """
    import resource

    size_kib = _rss_kib("VmSize") or 0
    limit = int(size_kib * 1024 + gib * 1024 ** 3)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def run_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Measure one configuration in this process (call only in a fresh process)."""
    import torch

    from voxdiff.train.trainer import _autocast

    method = Method.from_dict(spec["method"])
    if spec.get("mem_limit_gib"):
        _limit_address_space(float(spec["mem_limit_gib"]))
    size = int(spec["size"])
    repeats = max(1, int(spec.get("repeats", 1)))
    n_batch, accum = int(spec.get("batch", 1)), int(spec.get("accumulate", 1))
    _check_training_options(n_batch, accum)
    seed = int(spec.get("seed", 0))
    device = torch.device(spec.get("device", "cpu"))
    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    torch.manual_seed(seed)
    crop = int(round(size * method.crop_fraction))
    task = method.build().to(device)
    mult = task.required_multiple
    if crop % mult:
        at = f" at depth {method.depth}" if method.depth is not None else ""
        raise VoxdiffError(f"{method.name}: training crop {crop}^3 (volume {size}^3) is not a multiple of "
                           f"{mult}, which the network needs{at}")
    task.train()
    opt = torch.optim.AdamW(task.parameters(), lr=1e-4)
    # As the trainer: loss scaling only for fp16 (bf16 has fp32's exponent range).
    scaler = torch.amp.GradScaler(device.type, enabled=method.precision == "fp16")
    gen = torch.Generator().manual_seed(seed)
    batch = synthetic_batch(task, crop, size, device, gen, batch=n_batch)
    params = sum(p.numel() for p in task.parameters())
    calls = itertools.count()

    def generators() -> list:
        # One generator per crop and a fresh draw per micro-batch, as the trainer's per-sample streams.
        k = next(calls)
        return [torch.Generator().manual_seed(seed + k * n_batch + i) for i in range(n_batch)]

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        meter: _CpuMeter | _CudaMeter = _CudaMeter(device)
    else:
        meter = _CpuMeter()
    baseline = meter.baseline

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        for _ in range(accum):
            with _autocast(device, method.precision):
                loss, _ = task(batch, generators())
            scaler.scale(loss / accum).backward()
            del loss
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(task.parameters(), 1.0)
        scaler.step(opt)
        scaler.update()

    meter.reset()
    warm_s = meter.timed(step)
    warm_peak = meter.peak() - baseline
    peaks, times = [], []
    for _ in range(repeats):
        meter.reset()
        times.append(meter.timed(step))
        peaks.append(meter.peak() - baseline)
    param_mib = _mib(task.parameters())
    grad_mib = _mib(p.grad for p in task.parameters() if p.grad is not None)
    state_mib = _mib(v for st in opt.state.values() for v in st.values() if torch.is_tensor(v) and v.numel() > 1)
    saved = None
    if spec.get("saved", True):
        saved = _saved_bytes(task, batch, device, method.precision, generators())
    return {
        "method": method.name, "description": method.description, "task": method.task, "size": size,
        **_row_keys(method, n_batch, accum),
        "train_size": crop, "device": str(device), "base": spec.get("base"), "params": params,
        "peak_mib": max(peaks) / MIB, "warmup_peak_mib": warm_peak / MIB, "baseline_mib": baseline / MIB,
        "saved_mib": None if saved is None else saved / MIB,
        "param_mib": param_mib, "grad_mib": grad_mib, "optim_state_mib": state_mib,
        "step_s": statistics.median(times), "step_times_s": times, "warmup_s": warm_s, "repeats": repeats,
        "memory_method": meter.method, "threads": torch.get_num_threads(), "torch": torch.__version__,
        "puzzle_factor": method.puzzle_factor, "samples_per_step": n_batch * accum,
    }


def _mib(tensors) -> float:
    return sum(t.numel() * t.element_size() for t in tensors) / MIB


def _saved_bytes(task, batch, device, precision: str, generators=None) -> int:
    """Bytes autograd saves in one training forward of ``task`` (parameters excluded)."""
    import torch

    from voxdiff.nets.memory import saved_bytes
    from voxdiff.train.trainer import _autocast

    def run():
        with _autocast(device, precision):
            return task(batch, generators or [torch.Generator().manual_seed(0)])[0]

    return saved_bytes(run, task.parameters())


# ---------------------------------------------------------------------------------- parent side
def measure_in_subprocess(method: Method, size: int, *, base: int | None = None, device: str = "cpu",
                          repeats: int = 1, seed: int = 0, threads: int | None = None, saved: bool = True,
                          timeout: float | None = None, mem_limit_gib: float | None = None, batch: int = 1,
                          accumulate: int = 1) -> dict[str, Any]:
    """Run :func:`run_worker` for one configuration in a fresh Python process.

    ``batch`` crops per micro-batch, ``accumulate`` micro-batches per optimizer step. Returns
    the worker's result, or ``{"method", "size", "error", ...}`` when it failed (out of memory,
    killed, bad size, an op the precision does not support); a failure never stops the caller.
    ``mem_limit_gib`` caps the worker's address space (CPU only: CUDA reserves huge virtual ranges).
    """
    _check_training_options(batch, accumulate)
    spec = {"method": method.to_dict(), "size": int(size), "base": base, "device": device,
            "repeats": int(repeats), "seed": int(seed), "threads": threads, "saved": saved,
            "mem_limit_gib": mem_limit_gib if device == "cpu" else None, "batch": int(batch),
            "accumulate": int(accumulate)}
    failed = {"method": method.name, "size": int(size), **_row_keys(method, batch, accumulate)}
    env = {**os.environ, **WORKER_ENV}
    # ``-c`` rather than ``-m``: the package __init__ already imports this module.
    cmd = [sys.executable, "-c", "import sys; from voxdiff.bench.memory import _main; sys.exit(_main(sys.argv[1:]))",
           "--worker", json.dumps(spec)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {**failed, "error": f"timed out after {timeout:g} s"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX):])
    tail = (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
    if proc.returncode < 0:
        # Only SIGKILL hints at the OOM killer; SIGTERM and others come from outside the benchmark.
        sig = -proc.returncode
        tail = f"killed by signal {sig}" + (" (out of memory?)" if sig == 9 else "")
    return {**failed, "error": tail}


def run_memory_benchmark(methods: Sequence[Method], sizes: Sequence[int], *, base: int | None = None,
                         device: str = "cpu", repeats: int = 1, seed: int = 0, threads: int | None = None,
                         saved: bool = True, timeout: float | None = None, mem_limit_gib: float | None = None,
                         batch: int = 1, accumulate: int = 1,
                         on_result: Callable[[dict], None] | None = None) -> list[dict[str, Any]]:
    """Every (method, size) in its own process; ratios (:func:`add_ratios`) and depth growth
    (:func:`add_growth`) added. Variants (depth, precision, checkpointing) are methods of their
    own, see :func:`voxdiff.bench.methods.expand_methods`."""
    _check_training_options(batch, accumulate)
    results = []
    for size in sizes:
        for m in methods:
            res = measure_in_subprocess(m, size, base=base, device=device, repeats=repeats, seed=seed,
                                        threads=threads, saved=saved, timeout=timeout, mem_limit_gib=mem_limit_gib,
                                        batch=batch, accumulate=accumulate)
            results.append(res)
            if on_result is not None:
                on_result(res)
    add_ratios(results)
    add_growth(results)
    return results


def _setting(r: dict[str, Any]) -> tuple:
    """The training setting of a row apart from method and checkpointing (old rows: the defaults)."""
    return (r.get("size"), r.get("depth"), r.get("precision", "fp32"), r.get("batch", 1), r.get("accumulate", 1))


def add_ratios(results: list[dict[str, Any]], references: Sequence[str] = ("full3d", "full3d-sdpa")) -> None:
    """Add ``mem_ratio`` / ``time_ratio`` (method / reference in the same setting) in place.

    The setting is size, depth, precision, batch and accumulation; the reference is the first
    of ``references`` (matched on the row's ``base_method``, without checkpointing) measured
    there without error (``full3d-sdpa`` stands in where ``full3d`` ran out of memory); its
    name goes to ``ratio_to``.
    """
    for setting in dict.fromkeys(_setting(r) for r in results):
        at = [r for r in results if _setting(r) == setting]
        ok = {r.get("base_method", r["method"]): r for r in at
              if "error" not in r and not r.get("checkpointing")}
        name = next((n for n in references if n in ok), None)
        if name is None:
            continue
        base = ok[name]
        for r in at:
            if "error" in r:
                continue
            r["ratio_to"] = name
            r["mem_ratio"] = r["peak_mib"] / base["peak_mib"] if base["peak_mib"] > 0 else None
            r["time_ratio"] = r["step_s"] / base["step_s"] if base["step_s"] > 0 else None


def add_growth(results: list[dict[str, Any]]) -> None:
    """Add ``growth`` (peak), ``saved_growth`` and ``params_growth``: a depth-``d`` row relative to
    the same method at depth 1 in the same setting (size, precision, checkpointing, batch,
    accumulation), in place; None where that row is missing or failed."""
    def key(r):
        return (r.get("base_method", r["method"]), r.get("size"), r.get("precision", "fp32"),
                bool(r.get("checkpointing")), r.get("batch", 1), r.get("accumulate", 1))

    ones = {key(r): r for r in results if r.get("depth") == 1 and "error" not in r}
    for r in results:
        if r.get("depth") is None or "error" in r:
            continue
        one = ones.get(key(r))
        for out, field in (("growth", "peak_mib"), ("saved_growth", "saved_mib"), ("params_growth", "params")):
            a, b = r.get(field), None if one is None else one.get(field)
            r[out] = a / b if a is not None and b else None


def variant_label(r: dict[str, Any]) -> str:
    """Training options of a row in words: precision, checkpointing, batch x accumulation."""
    parts = [r.get("precision", "fp32")]
    if r.get("checkpointing"):
        parts.append("ckpt")
    b, a = r.get("batch", 1), r.get("accumulate", 1)
    if b != 1 or a != 1:
        parts.append(f"batch {b} x accum {a}")
    return ", ".join(parts)


def _has_variants(results: Sequence[dict[str, Any]]) -> bool:
    return any(variant_label(r) != "fp32" for r in results)


def memory_markdown(results: Sequence[dict[str, Any]]) -> str:
    """Markdown table of memory results (for BENCHMARKS.md).

    A ``variant`` column (precision, checkpointing, batch x accumulation) appears when a row
    is not plain fp32 batch 1, and ``x d1`` (peak relative to the same method at depth 1)
    when rows have a depth; without either the table is as before.
    """
    variants = _has_variants(results)
    depths = any(r.get("depth") is not None for r in results)
    head = ["method"] + (["variant"] if variants else []) + ["volume", "train crop", "params", "peak MiB"]
    head += (["x d1"] if depths else []) + ["x ref", "saved MiB"] + (["saved x d1"] if depths else [])
    head += ["s / step", "x ref"]
    lines = ["| " + " | ".join(head) + " |",
             "|---|" + ("---|" if variants else "") + "---:|" * (len(head) - 1 - variants)]
    for r in results:
        lead = [r["method"]] + ([variant_label(r)] if variants else []) + [f"{r['size']}^3"]
        if "error" in r:
            cells = lead + ["", "", f"failed: {r['error']}"]
            lines.append("| " + " | ".join(cells + [""] * (len(head) - len(cells))) + " |")
            continue
        ref = r.get("ratio_to")
        tag = "" if ref in (None, "full3d") else f" (vs {ref})"

        def ratio(v):
            return "-" if v is None else f"{v:.3f}{tag}"

        def growth(v):
            return "-" if v is None else f"{v:.3f}"

        saved = "-" if r.get("saved_mib") is None else f"{r['saved_mib']:.0f}"
        cells = lead + [f"{r['train_size']}^3", f"{r['params'] / 1e6:.2f}M", f"{r['peak_mib']:.0f}"]
        cells += ([growth(r.get("growth"))] if depths else []) + [ratio(r.get("mem_ratio")), saved]
        cells += ([growth(r.get("saved_growth"))] if depths else [])
        cells += [f"{r['step_s']:.2f}", ratio(r.get("time_ratio"))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_memory(results: Sequence[dict[str, Any]], path: str | Path, title: str | None = None) -> Path:
    """PNG: peak step memory and step time vs volume edge (log scales), one line per method."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from voxdiff.io import atomic_write_bytes

    ok = [r for r in results if "error" not in r]
    if not ok:
        raise VoxdiffError("no successful measurement to plot")
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    def label(r):
        return r["method"] if variant_label(r) == "fp32" else f"{r['method']} ({variant_label(r)})"

    for name in dict.fromkeys(label(r) for r in ok):
        rows = sorted((r for r in ok if label(r) == name), key=lambda r: r["size"])
        xs = [r["size"] for r in rows]
        axes[0].plot(xs, [max(r["peak_mib"], 1e-3) for r in rows], "o-", label=name)
        axes[1].plot(xs, [r["step_s"] for r in rows], "o-", label=name)
    for ax, lab in zip(axes, ("peak training-step memory (MiB)", "training-step time (s)")):
        ax.set_yscale("log")
        ax.set_xlabel("volume edge (voxels, cubic)")
        ax.set_ylabel(lab)
        ax.set_xticks(sorted({r["size"] for r in ok}))
        ax.grid(True, which="both", alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 5), fontsize=8, frameon=False)
    fig.subplots_adjust(bottom=0.25, wspace=0.3)
    dev = ok[0].get("device", "")
    fig.suptitle(title or f"one training step, batch 1, {dev}", fontsize=10)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())


def _report_failure(exc: BaseException) -> int:
    """Traceback for debugging, then one line the parent takes as the row's error."""
    import traceback

    traceback.print_exc()
    first = (str(exc).strip().splitlines() or [""])[0]
    print(f"{type(exc).__name__}: {first}", file=sys.stderr)
    return 4


def _main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description="voxdiff memory-benchmark worker (internal)")
    ap.add_argument("--worker", required=True, help="JSON spec of one configuration")
    args = ap.parse_args(argv)
    spec = json.loads(args.worker)
    try:
        res = run_worker(spec)
    except VoxdiffError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    except (MemoryError, RuntimeError) as exc:
        if isinstance(exc, RuntimeError) and "allocate" not in str(exc) and "out of memory" not in str(exc):
            return _report_failure(exc)
        limit = f" (limit {spec['mem_limit_gib']:g} GiB)" if spec.get("mem_limit_gib") else ""
        print(f"out of memory{limit}", file=sys.stderr)
        return 3
    except Exception as exc:  # e.g. an op without a kernel for the precision: that row's error
        return _report_failure(exc)
    print(RESULT_PREFIX + json.dumps(res), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(_main())
