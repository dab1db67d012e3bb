"""benchmarks/pet_race.py on a tiny synthetic PET dataset: split, fitting, serving, scoring, outputs."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from voxdiff.io import save_volume

REPO = Path(__file__).resolve().parents[2]
SHAPE = (16, 16, 12)
AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])


@pytest.fixture(scope="module")
def race():
    sys.path.insert(0, str(REPO / "benchmarks"))
    spec = importlib.util.spec_from_file_location("pet_race", REPO / "benchmarks" / "pet_race.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(autouse=True)
def _regions_are_labels(monkeypatch):
    # The synthetic labels are already region codes (1 = GM, 2 = WM): no MUSE tables needed.
    import voxdiff.metrics as M

    monkeypatch.setattr(M, "pet_region_map", lambda labels, tables_dir=None: np.asarray(labels, dtype=np.uint8))


def _dataset(root: Path, n: int = 8) -> tuple[Path, Path, Path]:
    """``n`` subjects: a GM shell around WM, one 8 mm WM lesion in two subjects of three, noisy doses."""
    from scipy import ndimage as ndi

    rng = np.random.default_rng(0)
    data, labels_dir = root / "data", root / "labels"
    data.mkdir()
    labels_dir.mkdir()
    g = np.stack(np.meshgrid(*[np.arange(s) - (s - 1) / 2 for s in SHAPE], indexing="ij"))
    r = np.sqrt((g ** 2).sum(0))
    rows = ["case,source,target,low_5,low_1,truth,activity,lesions,label"]
    for i in range(n):
        case = f"s{i}"
        lab = (2 * (r < 3.5) + 1 * ((r >= 3.5) & (r < 6.0))).astype(np.uint8)
        act = np.array([0.1, 8.0, 2.0])[lab] * rng.uniform(0.9, 1.1)
        les = np.zeros(SHAPE, np.int16)
        lesions = []
        if i % 3 != 1:  # lesion-free: s1, s4, s7 (the test split is s2 and s4: one of each)
            centre = [float(c) for c in (np.array(SHAPE) - 1) / 2]
            les[r < 2.0] = 1
            act[les > 0] *= 4.0
            lesions = [{"id": 1, "centre_voxel": centre, "diameter_mm": 8.0, "contrast": 4.0, "region": "WM"}]
        truth = ndi.gaussian_filter(act, 0.8)
        vols = {"truth": truth, "activity": act, "full": truth + rng.normal(0, 0.3, SHAPE),
                "low_5": truth + rng.normal(0, 1.5, SHAPE), "low_1": truth + rng.normal(0, 3.0, SHAPE),
                # non-attenuation-corrected: darker in the middle, as an uncorrected head is
                "nac_low_5": truth * (0.3 + 0.05 * r) + rng.normal(0, 1.5, SHAPE)}
        for role, v in vols.items():
            save_volume(v.astype(np.float32), data / f"{case}_{role}.nii.gz", affine=AFFINE)
        save_volume(les, data / f"{case}_lesions.nii.gz", affine=AFFINE, dtype=np.int16)
        save_volume(lab, labels_dir / f"{case}.nii.gz", affine=AFFINE, dtype=np.uint8)
        (data / f"{case}_lesions.json").write_text(json.dumps({"case": case, "lesion_free": not lesions, "lesions": lesions}))
        (data / f"{case}_pet.json").write_text(json.dumps({"seconds": 1.0}))
        rows.append(f"{case},{case}_low_5.nii.gz,{case}_full.nii.gz,{case}_low_5.nii.gz,{case}_low_1.nii.gz,"
                    f"{case}_truth.nii.gz,{case}_activity.nii.gz,{case}_lesions.nii.gz,../labels/{case}.nii.gz")
    (data / "manifest.csv").write_text("\n".join(rows) + "\n")
    config = root / "race.yaml"
    config.write_text(f"""task: regression
data:
  manifest: {data / 'manifest.csv'}
  roles: {{source: low_5, target: target}}
  normalization:
    source: {{mode: percentile, lower: 0.0, upper: 99.9}}
    target: {{mode: same_as, role: source}}
  crop_size: 8
  val_fraction: 0.125
  test_fraction: 0.25
  split_seed: 0
  val_cases: 1
model:
  backbone: {{kind: unet, base_channels: 8, channel_mults: [1, 2], num_res_blocks: 1, norm_groups: 4}}
train: {{steps: 2, batch_size: 2, val_every: 2, ckpt_every: 2, log_every: 1, out_dir: {root / 'run'}}}
inference: {{steps: 1}}
""")
    return data, labels_dir, config


def _args(race, data, labels_dir, config, out, *extra):
    return race.parser().parse_args(["--data", str(data), "--labels-dir", str(labels_dir), "--config", str(config),
                                     "--fit-subjects", "3", "--fwhm-grid", "0,2,4,6", "--out", str(out), *extra])


def test_race_scores_baselines_and_a_checkpoint_on_the_test_split(race, tmp_path):
    from voxdiff.train.config import load_config
    from voxdiff.train.trainer import Trainer

    data, labels_dir, config = _dataset(tmp_path)
    Trainer(load_config(config), quiet=True).fit()
    out, fig, cache = tmp_path / "race.json", tmp_path / "crc.png", tmp_path / "cache"
    args = _args(race, data, labels_dir, config, out, "--doses", "5,1", "--methods", "identity,full,gaussian",
                 "--model", f"unet={tmp_path / 'run' / 'last.pt'}",
                 "--model", f"unet-sw={tmp_path / 'run' / 'last.pt'}:sw_roi=crop",
                 "--figure", str(fig), "--cache", str(cache), "--gaussian-curve", "2,6")
    report = race.run(args)
    split = race.psr.make_split([f"s{i}" for i in range(8)], config)[0]
    assert report["test"] == split["test"] and len(report["test"]) == 2
    assert set(report["fit_cases"]) <= set(split["train"]) and len(report["fit_cases"]) == 3
    five, one = report["doses"]["5"], report["doses"]["1"]
    # The checkpoint was trained on low_5: scored at 5 % only, whole volume and with windows.
    assert five["names"] == ["identity", "full", "gaussian", "unet", "unet-sw"]
    assert one["names"] == ["identity", "full", "gaussian"]
    assert report["methods"]["unet"]["served"] == "whole volume"
    assert report["methods"]["unet-sw"]["served"] == "sliding windows 8"
    assert report["methods"]["unet"]["steps_trained"] == 2 and report["methods"]["unet"]["log_steps"] == 2
    img = five["summary"]["images"]
    # White noise on a smooth truth: the fitted filter beats the input; the full-dose row has no vs-full score.
    assert report["fit"]["5"]["fwhm_mm"] > 0
    assert img["gaussian"]["psnr_truth"]["mean"] > img["identity"]["psnr_truth"]["mean"]
    assert img["full"]["psnr_truth"]["mean"] > img["identity"]["psnr_truth"]["mean"] and "psnr_full" not in img["full"]
    assert img["unet"]["psnr_truth"]["n"] == 2
    # Paired differences against the Gaussian row, subject by subject.
    assert five["paired_vs"] == "gaussian" and five["paired"]["gaussian"]["psnr"]["mean"] == 0.0
    delta = [r["images"]["unet"]["psnr_truth"] - r["images"]["gaussian"]["psnr_truth"] for r in five["subjects"]]
    assert five["paired"]["unet"]["psnr"]["mean"] == pytest.approx(np.mean(delta))
    assert five["summary"]["hotspots"]["identity"]["subjects"] == sum(r["lesion_free"] for r in five["subjects"])
    assert five["summary"]["crc"]["full"]["8mm"]["crc"]["n"] == sum(r["n_lesions"] for r in five["subjects"]) == 1
    assert five["summary"]["hotspots"]["identity"]["subjects"] == 1
    # The Gaussian sweep: background variability falls as the filter widens.
    bv2, bv6 = (five["gaussian_curve"][f]["8mm"]["bv"]["mean"] for f in ("2", "6"))
    assert bv2 > bv6
    md = out.with_suffix(".md").read_text()
    assert "### 5 % dose" in md and "### 1 % dose" in md and "| unet-sw | sliding windows 8 |" in md
    assert fig.exists() and json.loads(out.read_text())["doses"]["5"]["names"] == five["names"]
    # A second run reads the checkpoint outputs back from the cache (same numbers).
    stored = sorted(p.name for p in cache.rglob("*.npy"))
    assert len(stored) == 4
    again = race.run(_args(race, data, labels_dir, config, tmp_path / "again.json", "--methods", "identity",
                           "--model", f"unet={tmp_path / 'run' / 'last.pt'}", "--cache", str(cache)))
    assert again["doses"]["5"]["summary"]["images"]["unet"]["psnr_truth"] == img["unet"]["psnr_truth"]
    # Another test split than the checkpoint's is refused.
    with pytest.raises(SystemExit, match="another test split"):
        race.TrainedMethod(race.parse_model(f"x={tmp_path / 'run' / 'last.pt'}"), ["s0"])


def test_validation_split_and_nac_input_are_scored_on_request(race, tmp_path):
    from voxdiff.io import load_volume
    from voxdiff.metrics.image import default_data_range, psnr

    data, labels_dir, config = _dataset(tmp_path)
    split = race.psr.make_split([f"s{i}" for i in range(8)], config)[0]
    report = race.run(_args(race, data, labels_dir, config, tmp_path / "val.json", "--split", "val",
                            "--input", "nac_low", "--doses", "5", "--methods", "identity,gaussian"))
    # The validation subjects (not the test ones) and the NAC image as the input.
    assert report["test"] == split["val"] and report["scored_split"] == "val" and report["input"] == "nac_low"
    case = split["val"][0]
    truth = load_volume(data / f"{case}_truth.nii.gz").array
    nac = load_volume(data / f"{case}_nac_low_5.nii.gz").array
    brain = load_volume(labels_dir / f"{case}.nii.gz").array > 0
    row = report["doses"]["5"]["subjects"][0]
    assert row["images"]["identity"]["psnr_truth"] == pytest.approx(psnr(nac, truth, default_data_range(truth, brain), brain), abs=1e-4)
    assert f"{len(split['val'])} val subjects scored" in (tmp_path / "val.md").read_text()


def test_bm4d_noise_model_is_fitted_on_training_subjects_and_denoises(race, tmp_path):
    data, labels_dir, _ = _dataset(tmp_path, n=3)
    subjects = [race.load_subject(data, labels_dir, f"s{i}", ("truth", "low_5"), 1) for i in range(2)]
    fit = race.fit_baselines(subjects, ["5"], [0.0, 2.0], "psd")["5"]
    n = int(np.prod(SHAPE))
    # White noise: the PSD (BM4D's N sigma^2 convention) is flat at the relative noise variance.
    assert fit["bm4d_psd_rel"].mean() == pytest.approx(n * fit["bm4d_sigma_rel"] ** 2, rel=0.05)
    test = race.load_subject(data, labels_dir, "s2", ("truth", "low_5"), 1)
    low, truth = test.images["low_5"], test.images["truth"]
    den = race.bm4d_denoise(low, fit, "psd")  # the race's default; one call (BM4D's PSD set-up takes seconds)
    assert den.shape == low.shape
    assert np.sqrt(np.mean((den - truth)[test.brain] ** 2)) < 0.8 * np.sqrt(np.mean((low - truth)[test.brain] ** 2))


def test_model_specs_and_downsampled_lesion_geometry(race, tmp_path):
    m = race.parse_model("ppdm=pretrained:pet-denoise")
    assert m == {"name": "ppdm", "path": "pretrained:pet-denoise", "options": {}}
    m = race.parse_model("p4=/runs/a/last.pt:samples=4,steps=10,sw_roi=crop,dose=1")
    assert m["path"] == "/runs/a/last.pt" and m["options"] == {"samples": 4, "steps": 10, "sw_roi": "crop", "dose": "1"}
    for bad in ("noname", "identity=/x.pt", "a=/x.pt:colour=red"):
        with pytest.raises(SystemExit):
            race.parse_model(bad)
    data, labels_dir, _ = _dataset(tmp_path, n=3)
    s = race.load_subject(data, labels_dir, "s2", ("truth", "full", "activity", "lesions"), 2)
    assert s.images["truth"].shape == (8, 8, 6) and np.allclose(s.spacing, 4.0)
    # Old voxel 7.5 (the centre of the 16-voxel axis) lies between new voxels 3 and 4.
    assert s.table["lesions"][0]["centre_voxel"][:2] == [3.5, 3.5]
    assert s.lesion_map.shape == (8, 8, 6) and s.lesion_map.max() == 1


def test_a_dose_conditioned_checkpoint_is_given_the_race_dose_unless_blind(race, tmp_path):
    from voxdiff.train.config import load_config
    from voxdiff.train.trainer import Trainer

    data, labels_dir, config = _dataset(tmp_path)
    text = config.read_text().replace("task: regression", "task: translation")
    text = text.replace("roles: {source: low_5, target: target}",
                        "roles: {source: [low_5, low_1], target: target}\n  conditions: {dose: {low_5: 5, low_1: 1}}")
    text = text.replace("model:\n", "model:\n  conditions: {dose: log}\n  condition_dropout: 0.5\n  puzzle_factor: 2\n")
    text = text.replace("inference: {steps: 1}", "inference: {steps: 2}")
    config.write_text(text)
    Trainer(load_config(config), quiet=True).fit()
    test = race.psr.make_split([f"s{i}" for i in range(8)], config)[0]["test"]
    ckpt = tmp_path / "run" / "last.pt"
    given = race.TrainedMethod(race.parse_model(f"d={ckpt}:dose=1"), test)
    blind = race.TrainedMethod(race.parse_model(f"b={ckpt}:dose=1,blind=1"), test)
    assert given.info["conditions"] == {"dose": 1.0} and blind.info["conditions"] == "blind"
    assert given.cache_key != blind.cache_key
    from voxdiff.io import load_volume

    low = load_volume(data / "s2_low_1.nii.gz")
    a, b = given(low.array, low.affine), blind(low.array, low.affine)
    assert a.shape == SHAPE and not np.allclose(a, b)
    assert given.info["schedule"]["conditions"] == {"dose": 1.0} and blind.info["schedule"]["conditions"] == "blind"


def test_a_fine_tune_reports_its_start_model_steps_beside_its_own(race):
    assert race._steps({"steps_trained": 2376, "steps_init": 12155}) == "12155 + 2376"
    assert race._steps({"steps_trained": 386, "steps_init": 0}) == "386"
    assert race._steps({}) == "–"
