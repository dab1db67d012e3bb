"""Benchmark harness: memory worker in subprocesses, sampling timer, quality-table helpers."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from voxdiff.bench.memory import add_ratios, measure_in_subprocess, memory_markdown, plot_memory
from voxdiff.bench.methods import Method, builtin_methods, resolve_methods, use_sdpa_attention
from voxdiff.bench.sampling import parse_steps, plan_runs, run_sampling_benchmark, sampling_markdown
from voxdiff.errors import VoxdiffError

REPO = Path(__file__).resolve().parents[1]


def _quality_module():
    spec = importlib.util.spec_from_file_location("quality_pet", REPO / "benchmarks" / "quality_pet.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_methods_build_and_roundtrip():
    methods = builtin_methods(8)
    for name in ("full3d", "full3d-sdpa", "patch", "ppdm2", "ppdm4", "ppdm4w", "ppdm2-nograd"):
        assert name in methods
    m = methods["ppdm4"]
    assert Method.from_dict(json.loads(json.dumps(m.to_dict()))) == m
    assert m.puzzle_factor == 4 and methods["patch"].crop_fraction == 0.5
    assert methods["ppdm4w"].model["backbone"]["base_channels"] == 128
    assert methods["ppdm2-nograd"].model["gradient_loss_weight"] == 0.0
    # The full-3D baseline is MONAI's UNet with the requested widths, not the default UNet3D.
    task = methods["full3d"].build()
    assert type(task.net.backbone).__name__ == "MonaiDiffusionUNet"
    assert "base_channels" not in task.model_cfg["backbone"]
    assert use_sdpa_attention(task) >= 1  # MONAI's bottleneck always has self-attention
    with pytest.raises(VoxdiffError, match="unknown benchmark method"):
        resolve_methods(["nope"], 8)


def test_memory_worker_subprocess(tmp_path):
    methods = resolve_methods(["full3d", "ppdm2"], 8)
    results = [measure_in_subprocess(m, 16, base=8, threads=1, timeout=900) for m in methods]
    for r in results:
        assert "error" not in r, r
        for key in ("peak_mib", "step_s", "saved_mib", "params", "train_size", "memory_method", "baseline_mib"):
            assert key in r
        assert r["peak_mib"] > 0 and r["saved_mib"] > 0 and r["step_s"] > 0 and r["params"] > 0
        assert r["size"] == 16 and r["train_size"] == 16
    add_ratios(results)
    assert results[0]["mem_ratio"] == pytest.approx(1.0)
    assert results[1]["mem_ratio"] == pytest.approx(results[1]["peak_mib"] / results[0]["peak_mib"])
    png = plot_memory(results, tmp_path / "mem.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_ratios_fall_back_to_sdpa_reference():
    def row(method, size, mib, sec):
        return {"method": method, "size": size, "train_size": size, "params": 1e6, "peak_mib": mib,
                "step_s": sec, "saved_mib": None}

    results = [row("full3d", 64, 100.0, 2.0), row("full3d-sdpa", 64, 80.0, 4.0), row("ppdm4", 64, 5.0, 1.0),
               {"method": "full3d", "size": 128, "error": "out of memory"}, row("full3d-sdpa", 128, 800.0, 8.0),
               row("ppdm4", 128, 20.0, 2.0)]
    add_ratios(results)
    assert results[2]["ratio_to"] == "full3d" and results[2]["mem_ratio"] == pytest.approx(0.05)
    assert results[5]["ratio_to"] == "full3d-sdpa" and results[5]["mem_ratio"] == pytest.approx(0.025)
    assert results[5]["time_ratio"] == pytest.approx(0.25) and "mem_ratio" not in results[3]
    md = memory_markdown(results).splitlines()
    assert len(md) == 2 + len(results) and "failed: out of memory" in md[5] and "(vs full3d-sdpa)" in md[7]


def test_memory_worker_reports_failures():
    # A crop that the network cannot take is a per-configuration error, not a crash.
    r = measure_in_subprocess(resolve_methods(["ppdm4"], 8)[0], 24, threads=1, saved=False, timeout=900)
    assert "error" in r and "multiple of 16" in r["error"]


def test_sampling_plan_and_timing():
    methods = resolve_methods(["full3d", "patch", "ppdm2"], 8)
    runs = plan_runs(methods, parse_steps("full3d-ddpm=1000,patch=0,ppdm=3"))
    assert [(r.label, r.steps) for r in runs] == [("full3d-ddpm", 1000), ("full3d-ddim", 50), ("ppdm2", 3)]
    with pytest.raises(VoxdiffError):
        parse_steps("full3d=abc")
    with pytest.raises(VoxdiffError, match="match no"):
        plan_runs(methods, {"unknown": 3})
    results = run_sampling_benchmark(resolve_methods(["full3d", "ppdm2"], 8), (16, 16, 12),
                                     steps=parse_steps("full3d-ddim=0,ppdm2=3"), max_steps=2, threads=1)
    by = {r["run"]: r for r in results}
    assert set(by) == {"full3d-ddpm", "ppdm2"}
    ddpm, ppdm = by["full3d-ddpm"], by["ppdm2"]
    assert ddpm["extrapolated"] and ddpm["measured_steps"] == 2 and ddpm["steps"] == 1000
    assert ddpm["seconds"] == pytest.approx(ddpm["measured_s"] / 2 * 1000)
    assert ppdm["extrapolated"] and ppdm["ratio_to_ppdm"] == pytest.approx(1.0)
    assert ddpm["ratio_to_ppdm"] == pytest.approx(ddpm["seconds"] / ppdm["seconds"])
    assert ddpm["shape"] == [16, 16, 12]
    md = sampling_markdown(results, "ppdm2")
    assert "extrapolated from 2 steps" in md and md.count("\n") == 1 + len(results)


def test_quality_helpers():
    q = _quality_module()
    rows = q.eval_rows(["full3d", "ppdm2"], ddim_steps=50, ppdm_steps=5, ddpm_cases=1)
    assert [r["row"] for r in rows] == ["identity (low-count input)", "full3d DDPM-1000", "full3d DDIM-50",
                                        "ppdm2 (5 steps)"]
    assert rows[1]["max_cases"] == 1 and rows[1]["eta"] == 1.0 and rows[2]["eta"] == 0.0
    yaml_path, ov = q.method_config("ppdm4-nograd", steps=7, crop=48, patch_crop=24, base=16, batch=1,
                                    out_dir=Path("/o"), manifest=Path("/m.csv"))
    assert yaml_path.name == "pet_ppdm.yaml"
    assert "model.puzzle_factor=4" in ov and "model.gradient_loss_weight=0.0" in ov and "train.steps=7" in ov
    from voxdiff.train.config import load_config

    cfg = load_config(*q.method_config("full3d", steps=3, crop=32, patch_crop=16, base=8, batch=1,
                                        out_dir=Path("/o"), manifest=Path("/m.csv")))
    assert cfg["task"] == "translation_ddpm" and cfg["model"]["backbone"]["channels"] == [8, 16, 16]
    # Seam alignment: a volume blocky on the grid shifted by the padding is found blocky.
    assert q.seam_pads((90, 120, 121), 16) == [3, 4, 3]
    rng = np.random.default_rng(0)
    blocks = np.kron(rng.normal(size=(8, 8, 8)), np.ones((4, 4, 4))) + 0.01 * rng.normal(size=(32, 32, 32))
    blocks = blocks[3:, 3:, 3:]
    assert q.aligned_seam(blocks, 4, [3, 3, 3]) > 10 * q.aligned_seam(blocks, 4, [0, 0, 0])
    per_case = [{"row": "a", "case": "c1", "psnr": 30.0, "ssim": 0.9, "mae": 1.0, "nmse": 0.1, "seam2": 1.0,
                 "seam4": 1.0, "seconds": 2.0},
                {"row": "a", "case": "c2", "psnr": 32.0, "ssim": 0.8, "mae": 3.0, "nmse": 0.1, "seam2": 1.0,
                 "seam4": float("inf"), "seconds": 4.0},
                {"row": "b", "case": "c1", "psnr": 20.0, "ssim": 0.5, "mae": 9.0, "nmse": 0.1, "seam2": 2.0,
                 "seam4": 2.0, "seconds": 1.0}]
    summary = q.summarize_rows(per_case)
    assert summary[0]["psnr"] == pytest.approx(31.0) and summary[0]["psnr_std"] == pytest.approx(1.0)
    assert summary[0]["seam4"] == pytest.approx(1.0) and summary[0]["n"] == 2  # inf is left out
    md = q.markdown_table(summary).splitlines()
    assert md[0].startswith("| method | n | PSNR") and len(md) == 4
    assert "**31.00 ± 1.00**" in md[2] and "**" not in md[3]
