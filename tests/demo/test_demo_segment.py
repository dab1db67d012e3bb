"""``voxdiff demo --task segment`` with tiny stand-in models (the shipped ones are trained elsewhere)."""

from __future__ import annotations

import csv
import json

import nibabel as nib
import numpy as np
import pytest

from voxdiff.demo import SEGMENT_FILES
from voxdiff.demo.segment import tissue_dice
from tests.helpers import cli_exit_code
from voxdiff.io import load_volume, save_volume

# The IXI orientation (PSR) at 2 mm: the demo's grid.
PSR = np.array([[0.0, 0.0, 2.0, -88.0], [-2.0, 0.0, 0.0, 118.0], [0.0, 2.0, 0.0, -135.0], [0, 0, 0, 1.0]])


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    """4-class (background, CSF-, GM-, WM-like shells) preseg and PD-DDPM models, 2 training steps each."""
    from voxdiff.train.config import load_config
    from voxdiff.train.trainer import Trainer

    root = tmp_path_factory.mktemp("seg4")
    rng = np.random.default_rng(0)
    g = np.stack(np.meshgrid(*[np.linspace(-1, 1, 16)] * 3, indexing="ij"))
    rows = ["case,image,label"]
    for i in range(3):
        r = np.sqrt(((g - rng.uniform(-0.1, 0.1, 3)[:, None, None, None]) ** 2).sum(0))
        lab = np.select([r < 0.3, r < 0.6, r < 0.8], [3, 2, 1], 0).astype(np.uint8)
        img = (np.array([0.0, 120.0, 430.0, 600.0])[lab] + rng.normal(0, 10, lab.shape)).clip(0).astype(np.float32)
        save_volume(img, root / f"c{i}_img.nii.gz", affine=PSR)
        save_volume(lab, root / f"c{i}_lab.nii.gz", affine=PSR, dtype=np.uint8)
        rows.append(f"c{i},c{i}_img.nii.gz,c{i}_lab.nii.gz")
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    models = {}
    for task, model in (("preseg", "{num_classes: 4, channels: [4, 8], num_res_units: 0}"),
                        ("segmentation", "{num_classes: 4, process: {kind: ddpm, num_train_timesteps: 50, "
                                         "prediction_type: x0}, backbone: {kind: unet, base_channels: 4, "
                                         "channel_mults: [1, 2], num_res_blocks: 1, norm_groups: 2}}")):
        cfg = load_config(None, [
            f"task={task}", f"data.manifest={root / 'manifest.csv'}", "data.crop_size=8", "data.val_fraction=0",
            "data.normalization={image: {mode: percentile, lower: 0.5, upper: 99.5, nonzero: true}}",
            f"model={model}", f"train.out_dir={root / task}", "train.steps=2", "train.batch_size=2",
            "train.val_every=0", "train.ckpt_every=2", "inference.steps=2", "inference.start_step=20"])
        Trainer(cfg, quiet=True).fit()
        models[task] = root / task / "last.pt"
    return models


def test_segment_demo_writes_every_file_in_the_inputs_geometry(tiny_models, tmp_path, capsys, monkeypatch):
    import socket

    def refuse(*args, **kwargs):
        raise AssertionError("the demo tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    out = tmp_path / "demo"
    code = cli_exit_code(["demo", "--task", "segment", "--model", tiny_models["segmentation"], "--preseg-model",
                 tiny_models["preseg"], "--size", "small", "--samples", 2, "--steps", 1, "-o", out])
    assert code == 0
    printed = capsys.readouterr().out
    assert "Dice" in printed and "PD-DDPM" in printed
    for name in SEGMENT_FILES:
        assert (out / name).is_file(), name
    t1 = load_volume(out / "t1.nii.gz")
    assert t1.shape == (32, 32, 32) and t1.orientation == "PSR" and t1.spacing == (2.0, 2.0, 2.0)
    labels = {n: load_volume(out / f"{n}.nii.gz") for n in ("preseg", "pdddpm", "reference")}
    unc = load_volume(out / "uncertainty.nii.gz")
    for vol in (*labels.values(), unc):
        assert vol.shape == t1.shape and np.allclose(vol.affine, t1.affine)
    for name, vol in labels.items():
        assert vol.disk_dtype == np.uint8 and set(np.unique(vol.array)) <= {0.0, 1.0, 2.0, 3.0}, name
    assert (unc.array >= 0).all() and unc.array.max() <= np.log(4) + 1e-4
    probs = nib.load(out / "probs.nii.gz")
    p = np.asarray(probs.dataobj)
    assert p.shape == (32, 32, 32, 4) and np.allclose(probs.affine, t1.affine, atol=1e-4)
    assert np.allclose(p.sum(-1), 1.0, atol=1e-4) and np.array_equal(p.argmax(-1), labels["pdddpm"].array.astype(int))
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["steps"] == 1 and summary["start_step"] == 20 and summary["samples"] == 2
    rows = {r["image"]: r for r in csv.DictReader((out / "metrics.csv").open())}
    assert set(rows) == {"preseg", "pdddpm"}
    for key in ("preseg", "pdddpm"):
        dice = summary["dice"][key]
        assert set(dice) == {"CSF", "GM", "WM", "mean"} and all(0.0 <= v <= 1.0 for v in dice.values())
        # The numbers are those of the written files.
        again = tissue_dice(labels[key].array, labels["reference"].array)
        assert dice == pytest.approx(again) and float(rows[key]["dice_mean"]) == pytest.approx(again["mean"], abs=1e-5)
    assert (out / "montage.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image as mpimg

    h, w = mpimg.imread(out / "montage.png").shape[:2]
    assert w > 1.4 * h  # five columns, three rows
    assert not list(out.glob(".*tmp*")), "no temporary files left behind"


def test_tissue_dice_per_class_and_mean():
    ref = np.zeros((4, 4, 4))
    ref[0], ref[1], ref[2] = 1, 2, 3
    assert tissue_dice(ref, ref) == {"CSF": 1.0, "GM": 1.0, "WM": 1.0, "mean": 1.0}
    pred = ref.copy()
    pred[2] = 2  # WM called GM: GM Dice 2*16/(32+16), WM 0
    d = tissue_dice(pred, ref)
    assert d["WM"] == 0.0 and d["GM"] == pytest.approx(2 / 3) and d["mean"] == pytest.approx((1 + 2 / 3) / 3)


def test_segment_demo_refuses_missing_models_and_bad_options(tiny_models, tmp_path, capsys):
    cases = [
        (["--task", "segment", "--preseg-model", "pretrained:no-such-preseg"], "pretrained:no-such-preseg"),
        (["--task", "segment", "--model", "pretrained:no-such-pdddpm", "--preseg-model", tiny_models["preseg"]],
         "pretrained:no-such-pdddpm"),
        (["--task", "segment", "--samples", 0], "--samples"),
        (["--task", "segment", "--steps", 0], "--steps"),
        (["--task", "segment", "--sampler", "ddim"], "--sampler"),
        # A PD-DDPM checkpoint where the pre-segmentation network belongs.
        (["--task", "segment", "--model", tiny_models["segmentation"], "--preseg-model",
          tiny_models["segmentation"]], "preseg"),
        (["--task", "segment", "--model", tiny_models["segmentation"], "--preseg-model", tiny_models["preseg"],
          "--start-step", 99], "--start-step"),
    ]
    for i, (args, needle) in enumerate(cases):
        out = tmp_path / f"o{i}"
        assert cli_exit_code(["demo", *args, "-o", out]) == 2, args
        err = capsys.readouterr().err
        assert err.startswith("error:") and needle in err and err.strip().count("\n") == 0, (args, err)
        assert "Traceback" not in err and not out.exists(), args
