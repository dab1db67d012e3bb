"""Benchmarks every method reports into: training-step memory/time and whole-volume sampling time.

``voxdiff bench memory`` and ``voxdiff bench sampling`` are the command-line entry points;
``benchmarks/quality_pet.py`` (in the repository) measures image quality on the PET task.
"""

from voxdiff.bench.memory import (add_ratios, measure_in_subprocess, memory_markdown, plot_memory,
                                  run_memory_benchmark)
from voxdiff.bench.methods import (DEFAULT_METHODS, Method, builtin_methods, invertible_available,
                                   method_from_config, resolve_methods, use_sdpa_attention)
from voxdiff.bench.sampling import parse_steps, plan_runs, run_sampling_benchmark, sampling_markdown

__all__ = ["DEFAULT_METHODS", "Method", "add_ratios", "builtin_methods", "invertible_available",
           "measure_in_subprocess", "memory_markdown", "method_from_config", "parse_steps", "plan_runs",
           "plot_memory", "resolve_methods", "run_memory_benchmark", "run_sampling_benchmark",
           "sampling_markdown", "use_sdpa_attention"]
