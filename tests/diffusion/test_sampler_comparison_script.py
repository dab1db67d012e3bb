"""benchmarks/sampler_comparison.py: run specs and the analytic mode end to end (tiny)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "sampler_comparison.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("sampler_comparison", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


def test_run_specs(bench):
    r = bench.parse_run("ddpm:all")
    assert (r.sampler, r.steps, r.eta, r.resolve(21)) == ("ddpm", "all", 1.0, 21)
    r = bench.parse_run("ddim:50:0.5")
    assert (r.steps, r.eta, r.label) == (50, 0.5, "ddim-50 (eta 0.5)")
    assert bench.parse_run("dpmsolver++:10").label == "dpmsolver++-10"
    for bad in ("euler:10", "ddim", "ddim:ten"):
        with pytest.raises((SystemExit, ValueError)):
            bench.parse_run(bad)


def test_analytic_mode_writes_json_and_markdown(bench, tmp_path):
    code = bench.main(["analytic", "--voxels", "256", "--num-train-timesteps", "100", "--runs", "dpmsolver++:5",
                       "ddim:5", "ddpm:5", "--out-dir", str(tmp_path)])
    assert code == 0
    data = json.loads((tmp_path / "sampler_comparison_analytic.json").read_text())
    runs = [r for r in data["rows"] if "sampler" in r]
    assert {(r["distribution"], r["sampler"]) for r in runs} == {
        (d, s) for d in ("gaussian", "mixture") for s in ("dpmsolver++", "ddim", "ddpm")}
    det = [r for r in runs if r["eta"] == 0.0]
    assert all(r["rms_to_ode_ref"] is not None and r["rms_to_ode_ref"] >= 0 for r in det)
    assert all(r["rms_to_ode_ref"] is None for r in runs if r["sampler"] == "ddpm")
    assert "| gaussian | dpmsolver++-5 |" in (tmp_path / "sampler_comparison_analytic.md").read_text()
