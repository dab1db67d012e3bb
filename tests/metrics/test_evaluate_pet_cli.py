"""``voxdiff evaluate`` with the PET metric set, on a tiny simulation-like folder with known answers."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import assert_user_error, run_main
from voxdiff.io import save_volume

SHAPE = (24, 24, 24)
AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])
# Slabs along x: cortex, white matter, caudate, cerebellar cortex, 3rd ventricle.
SLABS = ((0, 6, 100, 4.0), (6, 12, 81, 1.0), (12, 18, 36, 4.5), (18, 22, 38, 3.6), (22, 24, 4, 0.05))
LESION = {"id": 1, "centre_voxel": [9, 12, 12], "centre_mm": [18.0, 24.0, 24.0], "diameter_mm": 8.0,
          "contrast": 3.0, "background_activity": 1.0, "region": "WM"}


@pytest.fixture(autouse=True)
def _wide_console(monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")


def _tables(folder: Path) -> Path:
    """Minimal MUSE tables for the five labels above (the real ones live in shared data)."""
    folder.mkdir()
    (folder / "muse_single_labels.csv").write_text(
        "Index,Code,Name\n4,MUSE_4,3rdVentricle\n36,MUSE_36,Caudate_R\n38,MUSE_38,CerebellumExterior_R\n"
        "81,MUSE_81,FrontalLobeWM_R\n100,MUSE_100,AnteriorCingulateGyrus_R\n")
    (folder / "muse_derived_mapping.csv").write_text(
        "509,Ventricles,4\n601,GM,36,38,100\n604,WM,81\n701,TotalBrain,4,36,38,81,100\n702,ICV,4,36,38,81,100\n")
    return folder


def _sphere(centre, diameter_mm):
    grid = np.indices(SHAPE, dtype=np.float64)
    return np.sqrt(sum(((g - c) * 2.0) ** 2 for g, c in zip(grid, centre))) <= diameter_mm / 2


@pytest.fixture
def sim(tmp_path):
    """Simulation folder (c1 with one lesion, c2 lesion-free), label folder, tables, predictions = 1.1 x truth."""
    labels = np.zeros(SHAPE, np.uint8)
    base = np.zeros(SHAPE)
    for lo, hi, lab, act in SLABS:
        labels[lo:hi] = lab
        base[lo:hi] = act
    dirs = {k: tmp_path / k for k in ("sim", "labels", "pred")}
    for d in dirs.values():
        d.mkdir()
    rng = np.random.default_rng(0)
    for case, lesion in (("c1", LESION), ("c2", None)):
        truth = base.copy()
        lesion_map = np.zeros(SHAPE, np.uint8)
        if lesion is not None:
            ball = _sphere(lesion["centre_voxel"], lesion["diameter_mm"])
            truth[ball] *= lesion["contrast"]
            lesion_map[ball] = lesion["id"]
        full = truth * (1.0 + 0.05 * rng.standard_normal(SHAPE))
        save_volume(truth.astype(np.float32), dirs["sim"] / f"{case}_truth.nii.gz", affine=AFFINE)
        save_volume(full.astype(np.float32), dirs["sim"] / f"{case}_full.nii.gz", affine=AFFINE)
        save_volume(full.astype(np.float32), dirs["sim"] / f"{case}_low_5.nii.gz", affine=AFFINE)
        save_volume(lesion_map, dirs["sim"] / f"{case}_lesions.nii.gz", affine=AFFINE, dtype=np.uint8)
        (dirs["sim"] / f"{case}_lesions.json").write_text(json.dumps(
            {"case": case, "lesion_free": lesion is None, "lesions": [lesion] if lesion else []}))
        save_volume(labels, dirs["labels"] / f"{case}.nii.gz", affine=AFFINE, dtype=np.uint8)
        pred = 1.1 * truth
        if lesion is None:
            pred[_sphere((3, 12, 12), 6.0)] *= 3.0  # an invented hot spot in the cortex of the lesion-free case
        name = f"{case}_denoised.nii.gz" if case == "c1" else f"{case}.nii.gz"
        save_volume(pred.astype(np.float32), dirs["pred"] / name, affine=AFFINE)
    dirs["tables"] = _tables(tmp_path / "tables")
    return dirs


def _rows(path: Path) -> dict[str, dict[str, str]]:
    with open(path, newline="") as f:
        return {r["case"]: r for r in csv.DictReader(f)}


def test_folder_mode_writes_the_pet_columns(sim, tmp_path, capsys):
    out_csv, out_json, details = tmp_path / "pet.csv", tmp_path / "pet.json", tmp_path / "lesions.json"
    code, out, err = run_main(["evaluate", "--pred-dir", sim["pred"], "--target-dir", sim["sim"], "--target-suffix", "_full",
                               "--truth", sim["sim"], "--regions", sim["labels"], "--muse-tables", sim["tables"],
                               "--lesions", sim["sim"], "--out", out_csv, "--summary", out_json, "--details", details],
                              capsys)
    assert code == 0, err
    rows = _rows(out_csv)
    assert set(rows) == {"c1", "c2"}
    header = list(rows["c1"])
    for col in ("psnr", "ssim", "nrmse", "psnr_truth", "ssim_truth", "nrmse_truth", "bias_gm", "bias_wm", "bias_deep_gm",
                "bias_cerebellum", "n_lesions", "crc_4mm", "crc_8mm", "crc_16mm", "crc_truth_4mm", "crc_truth_8mm",
                "crc_truth_16mm", "bv", "bv_truth", "hotspots", "hotspot_peak", "truth", "regions", "lesions"):
        assert col in header, col
    c1, c2 = rows["c1"], rows["c2"]
    assert c1["pred"].endswith("c1_denoised.nii.gz") and c1["truth"].endswith("c1_truth.nii.gz")
    assert float(c1["nrmse_truth"]) == pytest.approx(0.1, rel=1e-5)
    for region in ("gm", "wm", "deep_gm", "cerebellum"):
        assert float(c1[f"bias_{region}"]) == pytest.approx(10.0, rel=1e-4)
    # A uniformly scaled truth keeps every contrast: CRC of the perfect-resolution truth = 1.
    assert float(c1["crc_8mm"]) == pytest.approx(1.0, rel=1e-5) and float(c1["crc_truth_8mm"]) == pytest.approx(1.0, rel=1e-5)
    assert c1["crc_4mm"] == "nan" and float(c1["n_lesions"]) == 1 and float(c1["bv"]) == pytest.approx(0.0, abs=1e-6)
    assert float(c1["hotspots"]) == 0 and float(c2["hotspots"]) == 1
    assert float(c2["hotspot_peak"]) == pytest.approx(3.0, rel=1e-4) and c2["crc_8mm"] == "nan"
    doc = json.loads(out_json.read_text())
    assert doc["mode"] == "pet" and doc["metrics"]["crc_8mm"]["n"] == 1 and doc["metrics"]["crc_8mm"]["n_nonfinite"] == 1
    assert doc["metrics"]["hotspots"]["mean"] == pytest.approx(0.5)
    det = json.loads(details.read_text())
    (les,) = det["cases"][0]["lesions"]
    assert det["cases"][0]["case"] == "c1" and les["id"] == 1 and les["background"] == "tissue_core"
    assert les["size_bin_mm"] == 8.0 and les["crc"] == pytest.approx(1.0, rel=1e-5)
    assert det["cases"][1]["n_hotspots"] == 1 and det["cases"][1]["hotspots"][0]["voxel"][0] in (2, 3, 4)
    assert "PET metrics" in out and "bias_gm" in out


def test_one_pair_mode_finds_companions_by_case_prefix(sim, tmp_path, capsys):
    out_csv = tmp_path / "one.csv"
    code, _, err = run_main(["evaluate", "--pred", sim["pred"] / "c1_denoised.nii.gz",
                             "--target", sim["sim"] / "c1_full.nii.gz", "--truth", sim["sim"],
                             "--regions", sim["labels"] / "c1.nii.gz", "--muse-tables", sim["tables"],
                             "--lesions", sim["sim"], "--size-bins", "8,20", "--out", out_csv], capsys)
    assert code == 0, err
    row = _rows(out_csv)["c1_denoised"]
    assert row["lesions"].endswith("c1_lesions.nii.gz")
    assert float(row["crc_8mm"]) == pytest.approx(1.0, rel=1e-5) and row["crc_20mm"] == "nan" and "crc_16mm" not in row


def test_pet_without_truth_scores_against_the_target(sim, tmp_path, capsys):
    out_csv = tmp_path / "notruth.csv"
    code, _, err = run_main(["evaluate", "--pet", "--pred", sim["sim"] / "c2_truth.nii.gz",
                             "--target", sim["sim"] / "c2_truth.nii.gz", "--out", out_csv], capsys)
    assert code == 0, err
    row = _rows(out_csv)["c2_truth"]
    assert "psnr_truth" not in row and "bias_gm" not in row and "crc_8mm" not in row
    assert float(row["hotspots"]) == 0 and math.isinf(float(row["psnr"]))


def test_manifest_roles(sim, tmp_path, capsys):
    manifest = tmp_path / "cases.csv"
    manifest.write_text("case,pred,full,truth,labels,lesions\n"
                        f"c1,{sim['pred']}/c1_denoised.nii.gz,{sim['sim']}/c1_full.nii.gz,{sim['sim']}/c1_truth.nii.gz,"
                        f"{sim['labels']}/c1.nii.gz,{sim['sim']}/c1_lesions.nii.gz\n")
    out_csv = tmp_path / "m.csv"
    code, _, err = run_main(["evaluate", "--manifest", manifest, "--target-role", "full", "--truth-role", "truth",
                             "--regions-role", "labels", "--lesions-role", "lesions", "--muse-tables", sim["tables"],
                             "--out", out_csv], capsys)
    assert code == 0, err
    row = _rows(out_csv)["c1"]
    assert float(row["bias_wm"]) == pytest.approx(10.0, rel=1e-4) and float(row["crc_8mm"]) == pytest.approx(1.0, rel=1e-5)


def _pet_args(sim, **over):
    args = {"--pred": sim["pred"] / "c1_denoised.nii.gz", "--target": sim["sim"] / "c1_full.nii.gz",
            "--truth": sim["sim"] / "c1_truth.nii.gz", "--regions": sim["labels"] / "c1.nii.gz",
            "--muse-tables": sim["tables"], "--lesions": sim["sim"] / "c1_lesions.nii.gz", **over}
    return ["evaluate"] + [str(x) for k, v in args.items() if v is not None for x in (k, v)]


def test_bad_pet_inputs_exit_2_with_one_line(sim, tmp_path, capsys):
    out_csv = tmp_path / "never.csv"
    (sim["sim"] / "c1_lesions.json").unlink()
    assert_user_error(*run_main(_pet_args(sim, **{"--out": out_csv}), capsys), "c1_lesions.json")
    small = save_volume(np.ones((24, 24, 23), np.float32), tmp_path / "small_truth.nii.gz", affine=AFFINE)
    line = assert_user_error(*run_main(_pet_args(sim, **{"--truth": small, "--lesions": None, "--out": out_csv}), capsys),
                             "small_truth.nii.gz")
    assert "shape" in line
    assert_user_error(*run_main(_pet_args(sim, **{"--lesions": None, "--truth": tmp_path / "nowhere"}), capsys), "nowhere")
    assert_user_error(*run_main(_pet_args(sim, **{"--lesions": None, "--truth": sim["labels"]}), capsys), "--truth")
    # A lesion map whose ids the table does not list.
    bad_map = np.zeros(SHAPE, np.uint8)
    bad_map[1:3, 1:3, 1:3] = 7
    save_volume(bad_map, tmp_path / "x_lesions.nii.gz", affine=AFFINE, dtype=np.uint8)
    (tmp_path / "x_lesions.json").write_text(json.dumps({"case": "x", "lesion_free": True, "lesions": []}))
    line = assert_user_error(*run_main(_pet_args(sim, **{"--lesions": tmp_path / "x_lesions.nii.gz"}), capsys))
    assert "[7]" in line
    assert not out_csv.exists()


def test_pet_option_errors(sim, capsys):
    pair = ["--pred", str(sim["pred"] / "c2.nii.gz"), "--target", str(sim["sim"] / "c2_full.nii.gz")]
    for extra in (["--seg", "--truth", str(sim["sim"])], ["--truth-role", "truth"], ["--details", "d.json"],
                  ["--pet", "--size-bins", "4,x"], ["--pet", "--size-bins", "0"], ["--pet", "--hotspot-threshold", "1"],
                  ["--target-suffix", "_full"], ["--labels", str(sim["labels"])]):
        assert_user_error(*run_main(["evaluate", *pair, *extra], capsys))
