"""Bad-input corpus, ``bench memory`` and ``bench sampling``: bad options refused before any run."""

from __future__ import annotations

import pytest

from tests.cli.bad_input_helpers import listing, _wide_console  # noqa: F401  (autouse)
from tests.helpers import assert_user_error, run_main


# ----------------------------------------------------------------------------- bench (refused before any run)
BENCH_CASES = {
    "memory_unknown_method": (["memory", "--methods", "nosuch", "--sizes", "8"], ["nosuch"]),
    "memory_size0": (["memory", "--sizes", "0"], ["--sizes"]),
    "memory_size_text": (["memory", "--sizes", "a,b"], ["--sizes", "a,b"]),
    "memory_repeats": (["memory", "--sizes", "8", "--repeats", "0"], ["--repeats"]),
    "memory_base": (["memory", "--sizes", "8", "--base", "0"], ["--base"]),
    "memory_device": (["memory", "--sizes", "8", "--device", "tpu"], ["--device", "tpu"]),
    "memory_json_dir": (["memory", "--sizes", "8", "--json", "{tmp}/missing_dir/m.json"], ["missing_dir"]),
    "memory_plot_is_folder": (["memory", "--sizes", "8", "--plot", "{tmp}"], ["is a folder"]),
    "memory_config": (["memory", "--sizes", "8", "--config", "{tmp}/missing.yaml"], ["missing.yaml"]),
    "sampling_unknown_method": (["sampling", "--methods", "nosuch", "--size", "8"], ["nosuch"]),
    "sampling_size0": (["sampling", "--size", "0"], ["--size"]),
    "sampling_size_2d": (["sampling", "--size", "8,8"], ["--size", "8,8"]),
    "sampling_size_text": (["sampling", "--size", "x"], ["--size"]),
    "sampling_size_and_input": (["sampling", "--size", "8", "--input", "{good}"], ["--size", "--input"]),
    "sampling_max_steps": (["sampling", "--size", "8", "--max-steps", "0"], ["--max-steps"]),
    "sampling_steps_unknown": (["sampling", "--size", "8", "--steps-per-method", "bogus=3"], ["bogus"]),
    "sampling_steps_text": (["sampling", "--size", "8", "--steps-per-method", "ppdm=x"], ["ppdm=x"]),
    "sampling_markdown_dir": (["sampling", "--size", "8", "--markdown", "{tmp}/missing_dir/s.md"], ["missing_dir"]),
}


@pytest.mark.parametrize("case", [*BENCH_CASES, *(f"sampling_input_{b}" for b in ("missing", "text", "flat2d", "nan"))])
def test_bench(case, corpus, capsys, tmp_path):
    if case.startswith("sampling_input_"):
        bad = corpus[case.removeprefix("sampling_input_")]
        args, words = ["sampling", "--input", str(bad)], [bad.name]
    else:
        args, words = BENCH_CASES[case]
        args = [a.format(tmp=tmp_path, good=corpus["good"]) for a in args]
    line = assert_user_error(*run_main(["bench", *args], capsys))
    for word in words:
        assert word in line, (word, line)
    assert listing(tmp_path) == []
