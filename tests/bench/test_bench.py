"""Benchmark harness: memory worker in subprocesses, sampling timer, quality-table helpers."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from voxdiff.bench.memory import (add_growth, add_ratios, measure_in_subprocess, memory_markdown, plot_memory,
                                  run_memory_benchmark)
from voxdiff.bench.methods import (Method, builtin_methods, expand_methods, invertible_available, resolve_methods,
                                   use_sdpa_attention, with_checkpointing, with_depth, with_precision)
from voxdiff.bench.sampling import parse_steps, plan_runs, run_sampling_benchmark, sampling_markdown
from voxdiff.errors import VoxdiffError

REPO = Path(__file__).resolve().parents[2]


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
    # ... also where only the deeper net cannot take it; the error row keeps the variant.
    r = measure_in_subprocess(with_depth(resolve_methods(["ppdm2"], 8)[0], 2), 8, threads=1, saved=False,
                              timeout=900)
    assert "multiple of 16" in r["error"] and "at depth 2" in r["error"]
    assert r["method"] == "ppdm2@d2" and r["depth"] == 2 and r["base_method"] == "ppdm2"
    with pytest.raises(VoxdiffError, match="accumulate"):
        measure_in_subprocess(resolve_methods(["ppdm2"], 8)[0], 16, accumulate=0)


def _params(method: Method) -> int:
    return sum(p.numel() for p in method.build().parameters())


def test_with_depth_doubles_levels_and_blocks():
    methods = builtin_methods(8)
    names = ["patch", "ppdm2", "full3d"] + (["idm"] if invertible_available() else [])
    for name in names:
        d1, d2 = with_depth(methods[name], 1), with_depth(methods[name], 2)
        assert (d1.name, d2.name, d1.depth, d2.family_name) == (f"{name}@d1", f"{name}@d2", 1, name)
        assert Method.from_dict(json.loads(json.dumps(d2.to_dict()))) == d2
        nets = [m.build().net.backbone for m in (d1, d2)]
        assert _params(d2) > _params(d1)
        bb1, bb2 = d1.model["backbone"], d2.model["backbone"]
        if name == "full3d":  # MONAI: channel list of 2d entries, last one repeated
            assert bb1["channels"] == [8, 16] and bb2["channels"] == [8, 16, 16, 16]
            assert bb2["attention_levels"] == [False] * 4 and bb2["num_res_blocks"] == 2
            assert [n.required_multiple for n in nets] == [2, 8]
        elif name == "idm":
            assert (bb1["levels"], bb1["blocks_per_level"], bb2["levels"], bb2["blocks_per_level"]) == (2, 1, 4, 2)
            assert [n.levels for n in nets] == [2, 4] and nets[1].widths == [8, 16, 32, 64]
        else:  # UNet3D
            assert bb1["channel_mults"] == [1, 2] and bb2["channel_mults"] == [1, 2, 2, 2]
            assert [n.levels for n in nets] == [2, 4] and bb2["num_res_blocks"] == 2
    assert methods["ppdm2"].model["backbone"]["channel_mults"] == [1, 2, 2]  # the original is untouched
    with pytest.raises(VoxdiffError, match=">= 1"):
        with_depth(methods["ppdm2"], 0)


@pytest.mark.skipif(not invertible_available(), reason="invertible backbone not importable")
def test_idm_stored_is_idm_with_stored_activations():
    methods = builtin_methods(8)
    idm, stored = methods["idm"], methods["idm-stored"]
    assert stored.model["backbone"] == {**idm.model["backbone"], "memory_saving": False}
    assert _params(stored) == _params(idm)
    assert _params(with_depth(stored, 2)) == _params(with_depth(idm, 2))
    assert with_checkpointing(idm) is None  # the invertible net has no checkpointing option


def test_expand_methods_and_validation():
    methods = builtin_methods(8)
    names = ["ppdm2"] + (["idm"] if invertible_available() else [])
    out, notes = expand_methods([methods[n] for n in names], depths=[1, 2], precisions=["fp32", "bf16"],
                                checkpointing=True)
    got = [(m.name, m.precision) for m in out]
    assert got[:4] == [("ppdm2@d1", "fp32"), ("ppdm2@d1+ckpt", "fp32"), ("ppdm2@d1", "bf16"), ("ppdm2@d1+ckpt", "bf16")]
    assert len(got) == 8 + 4 * (len(names) - 1)
    assert all(m.checkpointing == m.name.endswith("+ckpt") for m in out)
    assert len(notes) == len(names) - 1 and all("idm" in n for n in notes)
    plain, _ = expand_methods([methods["ppdm2"]])
    assert plain == [methods["ppdm2"]]
    with pytest.raises(VoxdiffError, match="unknown precision"):
        expand_methods([methods["ppdm2"]], precisions=["fp8"])
    with pytest.raises(VoxdiffError, match="unknown precision"):
        with_precision(methods["ppdm2"], "half")


def test_worker_accumulation_and_bf16():
    ppdm2 = resolve_methods(["ppdm2"], 8)[0]
    r = measure_in_subprocess(ppdm2, 16, base=8, threads=1, accumulate=2, timeout=900)
    assert "error" not in r, r
    assert (r["batch"], r["accumulate"], r["samples_per_step"], r["precision"]) == (1, 2, 2, "fp32")
    assert r["peak_mib"] > 0 and r["grad_mib"] == pytest.approx(r["param_mib"])
    assert r["optim_state_mib"] == pytest.approx(2 * r["param_mib"])  # AdamW: two moments per parameter
    r = measure_in_subprocess(with_precision(ppdm2, "bf16"), 16, base=8, threads=1, batch=2, timeout=900)
    assert "error" not in r, r
    assert (r["precision"], r["batch"], r["accumulate"], r["samples_per_step"]) == ("bf16", 2, 1, 2)
    assert r["saved_mib"] > 0


def test_checkpointing_saves_less():
    methods, notes = expand_methods(resolve_methods(["ppdm2", "patch"], 8), checkpointing=True)
    assert [m.name for m in methods] == ["ppdm2", "ppdm2+ckpt", "patch", "patch+ckpt"] and not notes
    results = run_memory_benchmark(methods, [32], base=8, threads=1, timeout=900)
    by = {r["method"]: r for r in results}
    for name in ("ppdm2", "patch"):
        plain, ckpt = by[name], by[f"{name}+ckpt"]
        assert "error" not in plain and "error" not in ckpt, (plain, ckpt)
        assert ckpt["checkpointing"] and not plain["checkpointing"] and ckpt["base_method"] == name
        assert ckpt["params"] == plain["params"]
        assert ckpt["saved_mib"] < plain["saved_mib"]


def test_growth_ratios_and_variant_markdown():
    def row(method, depth, mib, prec="fp32", ckpt=False, batch=1):
        return {"method": f"{method}@d{depth}" + ("+ckpt" if ckpt else ""), "base_method": method, "depth": depth,
                "size": 64, "train_size": 64, "params": 1e6 * depth, "peak_mib": mib, "saved_mib": mib / 2,
                "step_s": 1.0, "precision": prec, "checkpointing": ckpt, "batch": batch, "accumulate": 1}

    results = [row("full3d-sdpa", 1, 100.0), row("full3d-sdpa", 2, 300.0), row("idm", 1, 50.0), row("idm", 2, 52.0),
               row("idm", 1, 30.0, "bf16"), row("idm", 2, 33.0, "bf16"),
               {"method": "ppdm2@d2", "base_method": "ppdm2", "depth": 2, "size": 64, "error": "out of memory"}]
    add_ratios(results)
    add_growth(results)
    assert results[1]["growth"] == pytest.approx(3.0) and results[3]["growth"] == pytest.approx(1.04)
    assert results[3]["params_growth"] == pytest.approx(2.0) and results[5]["growth"] == pytest.approx(1.1)
    assert results[3]["mem_ratio"] == pytest.approx(52 / 300)  # the reference at the same depth
    assert "mem_ratio" not in results[5]  # no full3d in bf16
    md = memory_markdown(results).splitlines()
    assert md[0].startswith("| method | variant | volume |") and "x d1" in md[0]
    assert len({ln.count("|") for ln in md}) == 1  # every row has every column
    assert "| idm@d2 | fp32 | 64^3 |" in md[5] and "| 1.040 |" in md[5] and "| bf16 |" in md[7]


def test_cli_depths_json(tmp_path):
    from typer.testing import CliRunner

    import voxdiff.cli  # noqa: F401  (registers every command)
    from voxdiff.cli.app import app

    out, md = tmp_path / "depth.json", tmp_path / "depth.md"
    res = CliRunner().invoke(app, ["bench", "memory", "--methods", "ppdm2", "--depths", "1,2", "--sizes", "16",
                                   "--base", "8", "--threads", "1", "--timeout", "900", "--json", str(out),
                                   "--markdown", str(md)])
    assert res.exit_code == 0, res.output
    data = json.loads(out.read_text())
    assert data["depths"] == [1, 2] and data["batch"] == 1
    rows = {r["method"]: r for r in data["results"]}
    assert set(rows) == {"ppdm2@d1", "ppdm2@d2"}
    assert all("error" not in r for r in rows.values()), rows
    assert rows["ppdm2@d1"]["depth"] == 1 and rows["ppdm2@d1"]["growth"] == pytest.approx(1.0)
    assert rows["ppdm2@d2"]["growth"] == pytest.approx(rows["ppdm2@d2"]["peak_mib"] / rows["ppdm2@d1"]["peak_mib"])
    assert rows["ppdm2@d2"]["params"] > rows["ppdm2@d1"]["params"]
    assert "x d1" in md.read_text().splitlines()[0]
    for bad, msg in ((["--depths", "0"], "--depths"), (["--precisions", "fp8"], "--precisions"),
                     (["--accumulate", "0"], "--accumulate"), (["--batch", "0"], "--batch")):
        res = CliRunner().invoke(app, ["bench", "memory", "--methods", "ppdm2", "--sizes", "16", *bad])
        assert res.exit_code != 0 and isinstance(res.exception, VoxdiffError) and msg in str(res.exception)


def test_sampling_plan_and_timing():
    methods = resolve_methods(["full3d", "patch", "ppdm2"], 8)
    runs = plan_runs(methods, parse_steps("full3d-ddpm=1000,patch=0,ppdm=3"))
    assert [(r.label, r.steps) for r in runs] == [("full3d-ddpm", 1000), ("full3d-ddim", 50),
                                                   ("full3d-dpmsolver++", 10), ("ppdm2", 3)]
    with pytest.raises(VoxdiffError):
        parse_steps("full3d=abc")
    with pytest.raises(VoxdiffError, match="match no"):
        plan_runs(methods, {"unknown": 3})
    results = run_sampling_benchmark(resolve_methods(["full3d", "ppdm2"], 8), (16, 16, 12),
                                     steps=parse_steps("full3d-ddim=0,full3d-dpmsolver++=0,ppdm2=3"), max_steps=2,
                                     threads=1)
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


def test_objective_check_learns_a_small_denoiser(tmp_path):
    spec = importlib.util.spec_from_file_location("objective_check", REPO / "benchmarks" / "objective_check.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    cfg = tmp_path / "c.yaml"
    cfg.write_text("task: translation\nmodel:\n  process: {kind: bridge, prediction_type: x0, noise_scale: 0.5}\n"
                   "  backbone: {kind: unet, base_channels: 8, channel_mults: [1, 2], num_res_blocks: 1, norm_groups: 4}\n"
                   "  puzzle_factor: 2\n  gradient_loss_weight: 0.0\ntrain: {lr: 1.0e-3}\n")
    rows = mod.loss_curve(str(cfg), steps=40, size=16, every=1, overrides={"prediction_type": "residual"})
    assert [r["step"] for r in rows] == list(range(41))
    assert all(r["loss"] > 0 and r["grad_norm"] > 0 for r in rows)
    # Seeded: the same curve again; and a tiny residual model moves off its initial loss within 40 steps.
    assert mod.loss_curve(str(cfg), steps=3, size=16, every=1, overrides={"prediction_type": "residual"}) == rows[:4]
    first, last = np.mean([r["loss"] for r in rows[:8]]), np.mean([r["loss"] for r in rows[-8:]])
    assert last < 0.95 * first  # 0.090 -> 0.082 for this tiny residual model
    # lr overrides the config's: the same first loss (same init and data), another second one.
    other = mod.loss_curve(str(cfg), steps=1, size=16, every=1, overrides={"prediction_type": "residual", "lr": "1e-5"})
    assert other[0]["loss"] == rows[0]["loss"] and other[1]["loss"] != rows[1]["loss"]
    with pytest.raises(SystemExit, match="unknown override"):
        mod.loss_curve(str(cfg), steps=1, size=16, every=1, overrides={"depth": "1"})
