"""``voxdiff demo``: the shipped model, model export, tissue-map PET simulation, the phantom, the demo end to end."""

from __future__ import annotations

import csv
import json
import socket
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from voxdiff.cli import main
from voxdiff.demo import DEMO_FILES, DEMO_GAUSSIAN_FWHM_MM, DEMO_SIMULATION, _display, demo_phantom, mni_on_ixi_grid, run_demo
from voxdiff.errors import VoxdiffError
from voxdiff.export import export_model
from voxdiff.io import Volume, load_volume
from voxdiff.metrics import psnr
from voxdiff.models import load_model, pretrained_names, resolve_model_path
from voxdiff.sim.pet import TISSUE_UPTAKE, simulate_tissue_pet, tissue_activity_map
from voxdiff.train.checkpoint import load_checkpoint, save_checkpoint

TRAINING_ONLY = ("optimizer", "scaler", "rng", "ema")
#: Image-mode tissue-map simulation settings (the demo itself simulates in the projection domain).
TISSUE_SIM = {"fwhm_mm": 5.0, "dose_fraction": 0.05, "mean_brain_counts": 200.0, "head_margin_mm": 10.0}


def _shipped(name: str, task: str):
    """A shipped model's raw file and its rebuilt task: under 20 MB, no training state, EMA float32 weights."""
    path = resolve_model_path(f"pretrained:{name}")
    assert name in pretrained_names()
    assert path.stat().st_size < 20e6
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert not set(TRAINING_ONLY) & set(raw), "an exported model carries no training state"
    assert raw["export"]["weights"] == "ema" and raw["task"] == task
    model, ckpt = load_model(f"pretrained:{name}", task=task)
    params = list(model.parameters())
    assert sum(p.numel() for p in params) == raw["export"]["parameters"]
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in params)
    return model, ckpt


def test_pretrained_pet_denoise_serves_every_dose_and_was_trained_on_independent_targets():
    task, ckpt = _shipped("pet-denoise", "translation")
    assert ckpt["config"]["model"]["puzzle_factor"] == 2 and ckpt["config"]["inference"]["steps"] == 5
    # Trained on the projection-domain simulation the demo uses: four doses, each against its complement
    # counts (data.alternatives: zip), not the full dose that shares the input's counts.
    assert ckpt["normalization"]["source"]["mode"] == "percentile"
    data = ckpt["config"]["data"]
    assert data["roles"] == {"source": ["low_5", "low_1", "low_10", "low_25"],
                             "target": ["comp_5", "comp_1", "comp_10", "comp_25"]} and data["alternatives"] == "zip"
    # Trained from scratch with the smoothed-source anchor (6 mm FWHM at 2 mm voxels), on the split of the
    # 5 % specialist that ships on as pet-denoise-5pct: the race's 16 test subjects stay unseen by both.
    assert ckpt["config"]["model"]["anchor_sigma"] == pytest.approx(1.27) and not ckpt.get("init")
    assert task.anchor_sigma == pytest.approx(1.27)
    _, start = load_model("pretrained:pet-denoise-5pct", task="translation")
    assert ckpt["split"] == start["split"] and start["config"]["data"]["roles"] == {"source": "low_5", "target": "target"}


def test_superseded_pretrained_name_resolves_to_its_successor():
    assert resolve_model_path("pretrained:pet-denoise-anydose") == resolve_model_path("pretrained:pet-denoise")
    assert "pet-denoise-anydose" not in pretrained_names()


def test_pretrained_ixi_synthesis_loads_and_samples_on_its_grid():
    task, ckpt = _shipped("ixi-synthesis", "synthesis")
    assert ckpt["config"]["model"]["backbone"]["kind"] == "invertible"
    assert ckpt["config"]["model"]["process"]["prediction_type"] == "v"
    assert ckpt["config"]["data"]["downsample"] == 2 and list(ckpt["reference_geometry"]["shape"]) == [60, 60, 45]
    x = torch.randn(1, 1, 16, 16, 16)  # any size the puzzle and the UNet accept
    with torch.no_grad():
        out = task.net(x, torch.tensor([500]))
    assert out.shape == x.shape and torch.isfinite(out).all()


def _fake_training_checkpoint(path: Path) -> tuple[dict, dict]:
    from voxdiff.tasks import build_task
    from voxdiff.train.config import load_config

    cfg = load_config(None, ["model.backbone={kind: unet, base_channels: 8, channel_mults: [1, 2], "
                             "num_res_blocks: 1, norm_groups: 4}", "model.puzzle_factor=2"])
    task = build_task(cfg["task"], cfg["model"])
    opt = torch.optim.AdamW(task.parameters())
    sum(p.sum() for p in task.parameters()).backward()
    opt.step()
    model = {k: v.clone() for k, v in task.state_dict().items()}
    shadow = {k: v + 0.01 * torch.randn_like(v) if v.is_floating_point() else v for k, v in model.items()}
    save_checkpoint(path, {"task": cfg["task"], "config": cfg, "model": model,
                           "ema": {"decay": 0.99, "num_updates": 1, "shadow": shadow},
                           "optimizer": opt.state_dict(), "scaler": {}, "step": 1, "rng": torch.get_rng_state(),
                           "normalization": {}, "dataset_normalizers": {}, "split": {"train": ["a"], "val": []},
                           "required_multiple": task.required_multiple,
                           "init": {"spec": "pretrained:pet-denoise", "step": 12155}})
    return model, shadow


def test_export_keeps_ema_weights_and_half_loads_back_as_float32(tmp_path):
    src = tmp_path / "last.pt"
    model, shadow = _fake_training_checkpoint(src)
    full = export_model(src, tmp_path / "full.pt")
    half = export_model(src, tmp_path / "half.pt", half=True)
    assert half["bytes"] < 0.7 * full["bytes"] < 0.5 * src.stat().st_size
    stored = load_checkpoint(tmp_path / "half.pt")
    assert not set(TRAINING_ONLY) & set(stored)
    assert stored["init"] == {"spec": "pretrained:pet-denoise", "step": 12155}   # where a fine-tune started
    assert {v.dtype for v in stored["model"].values() if v.is_floating_point()} == {torch.float16}
    for name, weights in (("full.pt", shadow), ("half.pt", {k: v.half().float() for k, v in shadow.items()})):
        task, _ = load_model(tmp_path / name, task="translation")
        for key, value in task.state_dict().items():
            assert value.dtype == torch.float32
            assert torch.equal(value, weights[key]), (name, key)
    raw_task, _ = load_model(export_model(src, tmp_path / "raw.pt", use_ema=False)["output"])
    key = next(iter(model))
    assert torch.equal(raw_task.state_dict()[key], model[key])


def _tissue_phantom(size: int = 32) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Slabs along x: pure GM, pure WM, 50/50 GM/WM, CSF; each 4+ PSF sigmas wide at the core."""
    gm = np.zeros((size,) * 3, np.float32)
    wm = np.zeros_like(gm)
    gm[2:12] = 1.0
    wm[12:22] = 1.0
    gm[22:26], wm[22:26] = 0.5, 0.5
    brain = np.zeros(gm.shape, bool)
    brain[2:30, 2:30, 2:30] = True
    return gm, wm, brain


def test_tissue_activity_mixes_uptakes_by_probability():
    gm, wm, brain = _tissue_phantom()
    act, mask, info = tissue_activity_map(gm, wm, brain_mask=brain)
    c = 16
    assert act[5, c, c] == pytest.approx(4.0 * act[15, c, c]) == pytest.approx(TISSUE_UPTAKE["gm"])
    assert act[24, c, c] == pytest.approx(0.5 * (TISSUE_UPTAKE["gm"] + TISSUE_UPTAKE["wm"]))
    assert act[28, c, c] == pytest.approx(TISSUE_UPTAKE["csf"])  # 1 - gm - wm inside the brain
    assert act[0, c, c] == 0.0 and mask.sum() == brain.sum()
    head = np.zeros_like(brain)
    head[1:31, 1:31, 1:31] = True
    act_h, _, _ = tissue_activity_map(gm, wm, brain_mask=brain, head_mask=head)
    assert act_h[1, c, c] == pytest.approx(TISSUE_UPTAKE["head"]) and act_h[0, c, c] == 0.0
    with pytest.raises(VoxdiffError, match="unknown tissue uptake"):
        tissue_activity_map(gm, wm, brain_mask=brain, uptake={"bone": 1.0})


def test_tissue_pet_is_deterministic_with_gm_wm_ratio_four():
    gm, wm, brain = _tissue_phantom()
    aff = np.diag([2.0, 2.0, 2.0, 1.0])
    vols = Volume(array=gm, affine=aff), Volume(array=wm, affine=aff)
    a = simulate_tissue_pet(*vols, brain_mask=brain, seed=3, **TISSUE_SIM)
    b = simulate_tissue_pet(*vols, brain_mask=brain, seed=3, **TISSUE_SIM)
    other = simulate_tissue_pet(*vols, brain_mask=brain, seed=4, **TISSUE_SIM)
    assert np.array_equal(a.full.array, b.full.array) and np.array_equal(a.low.array, b.low.array)
    assert not np.array_equal(a.low.array, other.low.array)
    assert a.full.shape == gm.shape and np.allclose(a.full.affine, aff)
    assert a.params["mean_brain_counts"] == pytest.approx(TISSUE_SIM["mean_brain_counts"])
    core = (slice(10, 22), slice(10, 22))
    ratio = a.full.array[6:8][:, core[0], core[1]].mean() / a.full.array[16:18][:, core[0], core[1]].mean()
    assert 3.6 < ratio < 4.4, ratio
    # The 5 % image is in the same units, with sqrt(1 / 0.05) ~ 4.5x the noise in the uniform WM core.
    wm_core = (slice(16, 18), *core)
    assert a.low.array[brain].mean() == pytest.approx(a.full.array[brain].mean(), rel=0.05)
    assert 3.5 < a.low.array[wm_core].std() / a.full.array[wm_core].std() < 5.5


def test_display_orientation_is_radiological():
    vol = np.zeros((4, 5, 6), np.float32)
    vol[0, 2, 3] = 1.0  # with this LPS affine, voxel index 0 along x is the patient's right
    lps = np.diag([-2.0, -2.0, 2.0, 1.0])
    shown = _display(vol, lps)
    assert shown.shape == (4, 5, 6)
    assert shown[0, 2, 3] == 1.0  # reoriented to RAS then flipped: the patient's right comes first
    ras = np.diag([2.0, 2.0, 2.0, 1.0])
    assert _display(vol, ras)[3, 2, 3] == 1.0


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No network and an empty nilearn data folder, to prove nothing is fetched."""
    def refuse(*args, **kwargs):
        raise AssertionError("the demo tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    data = tmp_path / "nilearn_data"
    data.mkdir()
    monkeypatch.setenv("NILEARN_DATA", str(data))
    return data


def test_demo_phantom_has_brainweb_classes_and_head_shells():
    vol = demo_phantom()
    cls = vol.array
    assert vol.shape == (120, 120, 90) and vol.orientation == "PSR" and vol.spacing == (2.0, 2.0, 2.0)
    assert set(np.unique(cls).tolist()) == {0, 1, 2, 3, 7, 9}
    brain = mni_on_ixi_grid().brain
    assert np.array_equal(cls[brain], mni_on_ixi_grid().reference.array[brain].astype(cls.dtype))
    # Shells around nilearn's brain mask: CSF to 2 mm, skull to 6 mm, scalp to 14 mm, then air.
    from scipy import ndimage as ndi

    assert (cls[~brain & (cls > 0)] != 2).all() and (cls[~brain & (cls > 0)] != 3).all()
    dist = ndi.distance_transform_edt(~brain, sampling=vol.spacing)
    assert dist[cls == 7].min() > 2.0 and dist[cls == 7].max() <= 6.0 + 1e-6
    assert (cls[dist > 14.0] == 0).all()
    small = demo_phantom(crop=16)
    assert small.shape == (16, 16, 16)
    # The crop keeps world positions: its first voxel is the same point of the full phantom.
    ijk = np.rint(np.linalg.inv(vol.affine) @ small.affine[:, 3]).astype(int)[:3]
    assert np.array_equal(small.array, cls[ijk[0]:ijk[0] + 16, ijk[1]:ijk[1] + 16, ijk[2]:ijk[2] + 16])


def test_demo_small_end_to_end(tmp_path, offline):
    out = tmp_path / "demo"
    summary = run_demo(out, steps=1, samples=1, crop=32, show_progress=False)
    assert not any(offline.iterdir()), "nilearn fetched data"
    for name in DEMO_FILES:
        assert (out / name).is_file(), name
    names = ("truth", "low", "full", "gaussian", "ppdm", "uncertainty", "brain_mask", "lesions")
    vols = {n: load_volume(out / f"{n}.nii.gz") for n in names}
    ref = vols["low"]
    assert ref.shape == (32, 32, 32) and ref.spacing == (2.0, 2.0, 2.0) and ref.orientation == "PSR"
    for vol in vols.values():
        assert vol.shape == ref.shape and np.allclose(vol.affine, ref.affine)
    mask = vols["brain_mask"].array > 0
    truth = vols["truth"].array
    rng = float(truth[mask].max() - truth[mask].min())
    got = {k: psnr(vols[k].array, truth, rng, mask) for k in ("low", "full", "gaussian", "ppdm")}
    # Scored against the noise-free truth: both denoisers well above the 5 % input, the full dose above all.
    assert got["ppdm"] > got["low"] + 3.0 and got["gaussian"] > got["low"] + 3.0, got
    assert got["full"] > max(got["ppdm"], got["gaussian"]), got
    assert summary["metrics"]["ppdm"]["psnr"] == pytest.approx(got["ppdm"], abs=1e-3)
    assert summary["metrics"]["gaussian"]["psnr"] == pytest.approx(got["gaussian"], abs=1e-3)
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert [r["image"] for r in rows] == ["input", "full", "gaussian", "ppdm"]
    assert float(rows[3]["psnr"]) == pytest.approx(got["ppdm"], abs=1e-3)
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["steps"] == 1 and saved["samples"] == 1 and saved["gaussian_fwhm_mm"] == DEMO_GAUSSIAN_FWHM_MM
    assert saved["simulation"]["physics"] == "projection" and saved["simulation"]["settings"]["doses"] == [0.05]
    assert saved["simulation"]["settings"] == DEMO_SIMULATION
    assert np.all(vols["uncertainty"].array == 0)  # one sample: no spread
    assert nib.load(out / "low.nii.gz").get_data_dtype() == np.float32
    lesion_ids = set(np.unique(vols["lesions"].array).tolist()) - {0}
    assert lesion_ids and lesion_ids <= set(range(1, saved["lesions"] + 1))
    # The same seed gives the same simulation; another seed another noise draw.
    again = run_demo(tmp_path / "again", steps=1, samples=1, crop=32, show_progress=False)
    assert again["metrics"]["input"]["psnr"] == pytest.approx(summary["metrics"]["input"]["psnr"], abs=1e-9)


def test_demo_cli_refuses_tasks_without_a_shipped_model(tmp_path, capsys):
    # Every demo task ships its models now: only an unknown task is refused.
    for task in ("nonsense",):
        with pytest.raises(SystemExit) as exc:
            main(["demo", "--task", task, "--out-dir", str(tmp_path / task)])
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith("error:") and task in err and "Traceback" not in err
        assert not (tmp_path / task).exists()
