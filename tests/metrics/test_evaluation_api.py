"""``voxdiff.metrics.evaluation`` used from Python: pairing files, scoring them, rendering the report."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest

from voxdiff.errors import VoxdiffError
from voxdiff.io import save_volume
from voxdiff.metrics import (
    EvaluationReport,
    Pair,
    PetSettings,
    evaluate_pairs,
    find_pairs,
    image_metrics,
)

AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])
SHAPE = (16, 16, 16)


def _volume(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = np.zeros(SHAPE, np.float32)
    base[4:12, 4:12, 4:12] = 80.0
    return base + rng.uniform(0, 20, SHAPE).astype(np.float32)


@pytest.fixture
def folders(tmp_path):
    """pred/{a_model, b}, target/{a_t2, b_t2, c_t2}, mask/{a, b}; returns (dirs, {case: (pred, target, mask)})."""
    dirs = {k: tmp_path / k for k in ("pred", "target", "mask")}
    for d in dirs.values():
        d.mkdir()
    arrays = {}
    for i, (case, pred_name) in enumerate((("a", "a_model"), ("b", "b"))):
        target = _volume(i)
        pred = target + np.random.default_rng(10 + i).normal(0, 4, SHAPE).astype(np.float32)
        mask = np.zeros(SHAPE, np.uint8)
        mask[2:14, 3:13, 2:14] = 1
        save_volume(pred, dirs["pred"] / f"{pred_name}.nii.gz", affine=AFFINE)
        save_volume(target, dirs["target"] / f"{case}_t2.nii.gz", affine=AFFINE)
        save_volume(mask, dirs["mask"] / f"{case}.nii.gz", affine=AFFINE, dtype=np.uint8)
        arrays[case] = (pred, target, mask != 0)
    save_volume(_volume(5), dirs["target"] / "c_t2.nii.gz", affine=AFFINE)
    return dirs, arrays


def test_folders_pair_by_case_name_and_score_like_image_metrics(folders):
    dirs, arrays = folders
    pairing = find_pairs(pred_dir=dirs["pred"], target_dir=dirs["target"], target_suffix="_t2", mask_dir=dirs["mask"])
    assert [p.case for p in pairing] == ["a", "b"]
    assert pairing.pairs[0].pred.name == "a_model.nii.gz" and pairing.pairs[0].target.name == "a_t2.nii.gz"
    assert pairing.pairs[1].mask == dirs["mask"] / "b.nii.gz"
    assert pairing.unscored_targets == ["c"]

    seen = []
    report = evaluate_pairs(pairing, progress=lambda i, n, pair: seen.append((i, n, pair.case)))
    assert seen == [(1, 2, "a"), (2, 2, "b")]
    assert isinstance(report, EvaluationReport) and report.mode == "image"
    assert report.keys == ["psnr", "ssim", "mae", "nmse", "nrmse", "data_range"]
    for case, scores in zip(("a", "b"), report.scores):
        pred, target, mask = arrays[case]
        expected = image_metrics(pred, target, mask=mask)
        assert scores == pytest.approx(expected, rel=1e-9)
    assert report.summary["psnr"]["mean"] == pytest.approx(np.mean([s["psnr"] for s in report.scores]))
    assert report.summary_document()["unscored_targets"] == ["c"]

    rows = list(csv.DictReader(io.StringIO(report.to_csv())))
    assert list(rows[0]) == ["case", "pred", "target", "mask", *report.keys]
    assert float(rows[1]["ssim"]) == report.scores[1]["ssim"]  # repr floats: exact round trip
    doc = json.loads(report.to_json())
    assert doc["mode"] == "image" and doc["n_cases"] == 2 and doc["cases"] == ["a", "b"]
    assert doc["conventions"]["mask"] == "voxels outside the mask are ignored"


def test_manifest_roles_split_and_fixed_data_range(folders, tmp_path):
    _, arrays = folders
    manifest = tmp_path / "cases.csv"
    manifest.write_text("case,output,reference,brain,split\n"
                        "a,pred/a_model.nii.gz,target/a_t2.nii.gz,mask/a.nii.gz,test\n"
                        "b,pred/b.nii.gz,target/b_t2.nii.gz,mask/b.nii.gz,train\n")
    pairing = find_pairs(manifest=manifest, pred_role="output", target_role="reference", mask_role="brain",
                         split="test")
    (pair,) = pairing.pairs
    assert pair.case == "a" and pair.pred.name == "a_model.nii.gz" and pair.mask.name == "a.nii.gz"
    report = evaluate_pairs(pairing, data_range=100.0)
    pred, target, mask = arrays["a"]
    assert report.scores[0] == pytest.approx(image_metrics(pred, target, mask=mask, data_range=100.0), rel=1e-9)
    assert report.conventions["data_range"] == 100.0


def test_segmentation_dice_of_shifted_cubes(tmp_path):
    target = np.zeros(SHAPE, np.uint8)
    target[4:8, 4:8, 4:8] = 1  # 64 voxels
    pred = np.zeros(SHAPE, np.uint8)
    pred[5:9, 4:8, 4:8] = 1  # shifted by one voxel: 48 shared
    pred[12:14, 12:14, 12:14] = 2  # a label the target lacks
    save_volume(pred, tmp_path / "p.nii.gz", affine=AFFINE, dtype=np.uint8)
    save_volume(target, tmp_path / "t.nii.gz", affine=AFFINE, dtype=np.uint8)
    report = evaluate_pairs(find_pairs(pred=tmp_path / "p.nii.gz", target=tmp_path / "t.nii.gz"),
                            kind="segmentation", labels=[1, 2, 3])
    (scores,) = report.scores
    assert report.mode == "segmentation" and report.labels == [1, 2, 3]
    assert scores["dice_1"] == pytest.approx(2 * 48 / (64 + 64))
    assert scores["hd95_1"] == pytest.approx(2.0)  # one voxel of 2 mm
    assert scores["dice_2"] == 0.0 and np.isnan(scores["hd95_2"])
    assert scores["dice_3"] == 1.0 and scores["hd95_3"] == 0.0  # absent from both maps
    assert report.summary["hd95_2"]["n_nonfinite"] == 1
    assert json.loads(report.to_json())["metrics"]["hd95_2"]["mean"] is None  # strict JSON: NaN -> null


def test_pet_pair_with_a_lesion_map(tmp_path):
    shape = (24, 24, 24)
    grid = np.indices(shape, dtype=np.float64)
    ball = np.sqrt(sum(((g - 12) * 2.0) ** 2 for g in grid)) <= 4.0  # 8 mm lesion at the centre
    truth = np.ones(shape)
    truth[ball] = 3.0
    save_volume(truth.astype(np.float32), tmp_path / "c_truth.nii.gz", affine=AFFINE)
    save_volume((1.1 * truth).astype(np.float32), tmp_path / "c_pred.nii.gz", affine=AFFINE)
    save_volume(ball.astype(np.uint8), tmp_path / "c_lesions.nii.gz", affine=AFFINE, dtype=np.uint8)
    lesion = {"id": 1, "centre_voxel": [12, 12, 12], "centre_mm": [24.0, 24.0, 24.0], "diameter_mm": 8.0,
              "contrast": 3.0, "background_activity": 1.0, "region": "WM"}
    (tmp_path / "c_lesions.json").write_text(json.dumps({"case": "c", "lesion_free": False, "lesions": [lesion]}))

    pairing = find_pairs(pred=tmp_path / "c_pred.nii.gz", target=tmp_path / "c_truth.nii.gz", truth=tmp_path,
                         lesions=tmp_path)
    (pair,) = pairing.pairs
    assert pair.truth.name == "c_truth.nii.gz" and pair.lesions.name == "c_lesions.nii.gz"
    report = evaluate_pairs(pairing)  # PET companions imply the PET metric set
    (scores,) = report.scores
    assert report.mode == "pet"
    assert scores["nrmse_truth"] == pytest.approx(0.1, rel=1e-5)
    assert scores["n_lesions"] == 1 and scores["crc_8mm"] == pytest.approx(1.0, rel=1e-5)
    assert np.isnan(scores["crc_4mm"]) and scores["hotspots"] == 0
    (detail,) = report.details
    assert detail["lesion_table"].endswith("c_lesions.json") and detail["lesions"][0]["id"] == 1
    assert report.conventions["size_bins_mm"] == [4.0, 8.0, 16.0]
    assert pair.case == "c_pred" and json.loads(report.details_json())["cases"][0]["case"] == "c_pred"
    (row,) = csv.DictReader(io.StringIO(report.to_csv()))
    assert row["lesions"].endswith("c_lesions.nii.gz") and row["truth"].endswith("c_truth.nii.gz")


def test_user_errors_name_the_file_or_option(folders, tmp_path):
    dirs, _ = folders
    with pytest.raises(VoxdiffError, match="give exactly one of"):
        find_pairs(pred=dirs["pred"] / "b.nii.gz", target_dir=dirs["target"])
    with pytest.raises(VoxdiffError, match=r"a_model\.nii\.gz: no target named 'a_model\.\*'.*--target-suffix"):
        find_pairs(pred_dir=dirs["pred"], target_dir=dirs["target"])
    small = save_volume(np.ones((16, 16, 15), np.float32), tmp_path / "small.nii.gz", affine=AFFINE)
    with pytest.raises(VoxdiffError, match="small.nii.gz"):
        evaluate_pairs([Pair("x", dirs["pred"] / "b.nii.gz", small)])
    with pytest.raises(VoxdiffError, match="apply to image metrics, not to --seg"):
        evaluate_pairs([Pair("b", dirs["pred"] / "b.nii.gz", dirs["target"] / "b_t2.nii.gz", dirs["mask"] / "b.nii.gz")],
                       kind="segmentation")
    with pytest.raises(VoxdiffError, match="--hotspot-threshold"):
        PetSettings(hotspot_threshold=1.0)
