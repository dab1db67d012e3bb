"""The command line: help, ``info``, ``evaluate`` end to end, and exit code 2 on every bad input."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from tests.helpers import assert_user_error, run_main
from voxdiff.cli import app, main
from voxdiff.io import save_volume


@pytest.fixture(autouse=True)
def _wide_console(monkeypatch):
    # rich reads COLUMNS when it renders: wide tables keep long tmp paths on one line.
    monkeypatch.setenv("COLUMNS", "250")


@pytest.fixture
def pair(tmp_path, tiny_affine):
    """A target, a prediction = target + 0.5, and a mask, all 16^3 in one geometry."""
    rng = np.random.default_rng(0)
    target = (100.0 + 50.0 * rng.random((16, 16, 16))).astype(np.float32)
    pred = target + np.float32(0.5)
    mask = np.zeros(target.shape, np.uint8)
    mask[4:12, 4:12, 4:12] = 1
    paths = {
        "target": save_volume(target, tmp_path / "target.nii.gz", affine=tiny_affine),
        "pred": save_volume(pred, tmp_path / "pred.nii.gz", affine=tiny_affine),
        "mask": save_volume(mask, tmp_path / "mask.nii.gz", affine=tiny_affine, dtype=np.uint8),
    }
    return paths, target, pred, mask.astype(bool)


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# --- help and info -----------------------------------------------------------------------------

def test_help_lists_commands():
    result = CliRunner().invoke(app, ["--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for command in ("info", "evaluate"):
        assert command in result.output
    result = CliRunner().invoke(app, ["evaluate", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    assert "Example:" in result.output and "--pred-dir" in result.output and "--seg" in result.output


def test_info_prints_shape_and_spacing(tmp_path, tiny_affine, capsys):
    path = save_volume(np.zeros((8, 9, 10), np.float32), tmp_path / "v.nii.gz", affine=tiny_affine)
    code, out, err = run_main(["info", path], capsys)
    assert code == 0, err
    assert "8x9x10" in out and "1.5x2x2.5" in out and "LAS" in out


def _bad_volume(tmp_path: Path, kind: str) -> Path:
    if kind == "missing":
        return tmp_path / "missing.nii.gz"
    if kind == "text":
        p = tmp_path / "notes.nii.gz"
        p.write_text("not a volume\n")
        return p
    if kind == "truncated":
        p = save_volume(np.ones((16, 16, 16), np.float32), tmp_path / "cut.nii.gz", affine=np.eye(4))
        data = p.read_bytes()
        p.write_bytes(data[: len(data) // 2])
        return p
    if kind == "4d":
        p = tmp_path / "series.nii.gz"
        nib.save(nib.Nifti1Image(np.zeros((16, 16, 16, 2), np.float32), np.eye(4)), str(p))
        return p
    if kind == "nan":
        arr = np.ones((16, 16, 16), np.float32)
        arr[3, 3, 3] = np.nan
        p = tmp_path / "holes.nii.gz"
        nib.save(nib.Nifti1Image(arr, np.eye(4)), str(p))
        return p
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["missing", "text", "truncated", "4d"])
def test_info_bad_input_exits_2(tmp_path, capsys, kind):
    path = _bad_volume(tmp_path, kind)
    code, out, err = run_main(["info", path], capsys)
    assert_user_error(code, out, err, path.name)


# --- evaluate ----------------------------------------------------------------------------------

def test_evaluate_one_pair_writes_correct_csv_and_json(pair, tmp_path, capsys):
    paths, target, pred, mask = pair
    out_csv, out_json = tmp_path / "scores.csv", tmp_path / "summary.json"
    code, out, err = run_main(["evaluate", "--pred", paths["pred"], "--target", paths["target"],
                               "--out", out_csv, "--summary", out_json], capsys)
    assert code == 0, err
    rows = _read_csv(out_csv)
    assert len(rows) == 1 and rows[0]["case"] == "pred"
    rng = float(target.max() - target.min())
    diff = pred.astype(np.float64) - target
    assert float(rows[0]["data_range"]) == pytest.approx(rng)
    assert float(rows[0]["psnr"]) == pytest.approx(10 * math.log10(rng**2 / np.mean(diff**2)), rel=1e-9)
    assert float(rows[0]["mae"]) == pytest.approx(0.5, rel=1e-5)
    assert float(rows[0]["nmse"]) == pytest.approx(np.sum(diff**2) / np.sum(target.astype(np.float64) ** 2), rel=1e-9)
    assert 0.99 < float(rows[0]["ssim"]) <= 1.0
    summary = json.loads(out_json.read_text())
    assert summary["mode"] == "image" and summary["n_cases"] == 1
    assert summary["metrics"]["psnr"]["mean"] == pytest.approx(float(rows[0]["psnr"]))
    assert summary["metrics"]["psnr"]["std"] == 0.0
    assert "PSNR" in out and "pred" in out


def test_evaluate_with_mask_and_data_range(pair, tmp_path, capsys):
    paths, target, pred, mask = pair
    out_csv = tmp_path / "masked.csv"
    code, _, err = run_main(["evaluate", "--pred", paths["pred"], "--target", paths["target"], "--mask", paths["mask"],
                             "--data-range", "10", "--out", out_csv], capsys)
    assert code == 0, err
    row = _read_csv(out_csv)[0]
    diff = (pred.astype(np.float64) - target)[mask]
    assert float(row["data_range"]) == 10.0
    assert float(row["psnr"]) == pytest.approx(10 * math.log10(100.0 / np.mean(diff**2)), rel=1e-9)
    assert row["mask"].endswith("mask.nii.gz")


def test_evaluate_folders_and_manifest(tmp_path, tiny_affine, capsys):
    rng = np.random.default_rng(1)
    pred_dir, target_dir = tmp_path / "pred", tmp_path / "target"
    pred_dir.mkdir()
    target_dir.mkdir()
    offsets = {"a": 1.0, "b": 3.0}
    for case, off in offsets.items():
        t = (10.0 * rng.random((12, 12, 12))).astype(np.float32)
        save_volume(t, target_dir / f"{case}.nii.gz", affine=tiny_affine)
        save_volume(t + np.float32(off), pred_dir / f"{case}.mha", affine=tiny_affine)  # extensions may differ
    save_volume(np.zeros((12, 12, 12)), target_dir / "c.nii.gz", affine=tiny_affine)  # no prediction
    summary = tmp_path / "dirs.json"
    code, out, err = run_main(["evaluate", "--pred-dir", pred_dir, "--target-dir", target_dir, "--summary", summary], capsys)
    assert code == 0, err
    assert "warning" in err and "c" in err
    doc = json.loads(summary.read_text())
    assert doc["cases"] == ["a", "b"] and doc["unscored_targets"] == ["c"]
    assert doc["metrics"]["mae"]["mean"] == pytest.approx(2.0, rel=1e-5)
    assert doc["metrics"]["mae"]["std"] == pytest.approx(1.0, rel=1e-5)

    manifest = tmp_path / "cases.csv"
    manifest.write_text("case,output,reference,split\n"
                        "a,pred/a.mha,target/a.nii.gz,test\n"
                        "b,pred/b.mha,target/b.nii.gz,train\n")
    out_csv = tmp_path / "manifest_scores.csv"
    code, _, err = run_main(["evaluate", "--manifest", manifest, "--pred-role", "output", "--target-role", "reference",
                             "--split", "test", "--out", out_csv], capsys)
    assert code == 0, err
    rows = _read_csv(out_csv)
    assert [r["case"] for r in rows] == ["a"]
    assert float(rows[0]["mae"]) == pytest.approx(1.0, rel=1e-5)


def test_evaluate_segmentation(tmp_path, capsys):
    shape = (16, 16, 16)
    affine = np.diag([1.0, 1.0, 2.5, 1.0])
    true = np.zeros(shape, np.uint8)
    pred = np.zeros(shape, np.uint8)
    true[4:12, 4:12, 4:12] = 1
    pred[4:12, 4:12, 6:14] = 1  # shifted 2 voxels along z (2.5 mm spacing)
    true[0:2, 0:2, 0:2] = 2  # missed by the prediction
    t = save_volume(true, tmp_path / "true.nii.gz", affine=affine, dtype=np.uint8)
    p = save_volume(pred, tmp_path / "seg.nii.gz", affine=affine, dtype=np.uint8)
    out_csv, out_json = tmp_path / "seg.csv", tmp_path / "seg.json"
    code, out, err = run_main(["evaluate", "--seg", "--pred", p, "--target", t, "--labels", "1,2,4",
                               "--out", out_csv, "--summary", out_json], capsys)
    assert code == 0, err
    row = _read_csv(out_csv)[0]
    assert float(row["dice_1"]) == pytest.approx(0.75)
    assert float(row["hd95_1"]) == pytest.approx(5.0)
    assert float(row["dice_2"]) == 0.0 and row["hd95_2"] == "nan"
    assert float(row["dice_4"]) == 1.0 and float(row["hd95_4"]) == 0.0
    doc = json.loads(out_json.read_text())  # strict JSON: NaN is written as null
    assert doc["metrics"]["hd95_2"] == {"mean": None, "std": None, "n": 0, "n_nonfinite": 1}
    assert doc["conventions"]["labels"] == [1, 2, 4]


@pytest.mark.parametrize("kind", ["missing", "text", "truncated", "4d", "nan"])
@pytest.mark.parametrize("which", ["pred", "target"])
def test_evaluate_bad_input_exits_2_and_writes_nothing(pair, tmp_path, capsys, kind, which):
    paths, *_ = pair
    bad = _bad_volume(tmp_path, kind)
    args = {"pred": paths["pred"], "target": paths["target"], which: bad}
    out_csv, out_json = tmp_path / "never.csv", tmp_path / "never.json"
    code, out, err = run_main(["evaluate", "--pred", args["pred"], "--target", args["target"],
                               "--out", out_csv, "--summary", out_json], capsys)
    assert_user_error(code, out, err, bad.name)
    assert not out_csv.exists() and not out_json.exists()


def test_evaluate_mismatched_shapes(pair, tmp_path, capsys):
    paths, *_ = pair
    other = save_volume(np.zeros((16, 16, 15), np.float32), tmp_path / "small.nii.gz", affine=np.eye(4))
    out_csv = tmp_path / "never.csv"
    code, out, err = run_main(["evaluate", "--pred", other, "--target", paths["target"], "--out", out_csv], capsys)
    line = assert_user_error(code, out, err, "small.nii.gz", "target.nii.gz")
    assert "shape" in line and not out_csv.exists()
    code, out, err = run_main(["evaluate", "--pred", paths["pred"], "--target", paths["target"], "--mask", other], capsys)
    assert_user_error(code, out, err, "small.nii.gz")


def test_evaluate_unwritable_output(pair, tmp_path, capsys):
    paths, *_ = pair
    for bad_out in (tmp_path / "no_such_dir" / "s.csv", tmp_path):  # missing folder; a folder, not a file
        code, out, err = run_main(["evaluate", "--pred", paths["pred"], "--target", paths["target"], "--out", bad_out], capsys)
        assert_user_error(code, out, err, str(bad_out))
    assert not (tmp_path / "no_such_dir").exists()


def test_evaluate_option_errors(pair, capsys):
    paths, *_ = pair
    for args in (["evaluate"], ["evaluate", "--pred", paths["pred"]],
                 ["evaluate", "--pred", paths["pred"], "--target", paths["target"], "--labels", "1"],
                 ["evaluate", "--seg", "--pred", paths["pred"], "--target", paths["target"], "--labels", "a,b"],
                 ["evaluate", "--pred", paths["pred"], "--target", paths["target"], "--data-range", "0"]):
        code, out, err = run_main(args, capsys)
        assert_user_error(code, out, err)


# --- the real process: console script exit codes ---------------------------------------------------

def _subprocess(args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "250"}
    return subprocess.run([sys.executable, "-m", "voxdiff", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=120)


def test_subprocess_exit_codes(pair, tmp_path):
    # One fresh interpreter (seconds of torch import): the real sys.exit(2) path of the console
    # script; success paths are covered in-process above. It fails before MONAI is imported.
    paths, *_ = pair
    bad = _bad_volume(tmp_path, "text")
    proc = _subprocess(["evaluate", "--pred", bad, "--target", paths["target"], "--out", tmp_path / "bad.csv"])
    assert_user_error(proc.returncode, proc.stdout, proc.stderr, bad.name)
    assert not (tmp_path / "bad.csv").exists()
