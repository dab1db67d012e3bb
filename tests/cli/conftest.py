"""Session-scoped fixtures of the bad-input corpus (tests/cli/test_bad_inputs_*.py).

They live here, not in a module the tests import, so that each (several tiny models among them) is built
once per run: pytest registers an imported fixture anew in every importing module. Each one only writes
into its own tmp_path_factory folder and is never changed by a test. Constants and assertions of the
corpus are in tests/cli/bad_input_helpers.py.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from tests.cli.bad_input_helpers import AFFINE
from tests.helpers import fake_muse_tables, make_cases, make_pairs, tiny_config
from voxdiff.io import save_volume
from voxdiff.train.config import load_config
from voxdiff.train.trainer import Trainer


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> dict[str, Path]:
    """Broken volumes, each named after what is wrong with it, plus a good one."""
    d = tmp_path_factory.mktemp("corpus")
    rng = np.random.default_rng(0)
    good = (rng.random((16, 16, 16)) * 100).astype(np.float32)
    files = {"good": save_volume(good, d / "good.nii.gz", affine=AFFINE)}
    raw = files["good"].read_bytes()
    (d / "truncated.nii.gz").write_bytes(raw[: len(raw) // 2])
    (d / "text.nii.gz").write_text("this is not a volume\n")
    (d / "garbage.nii.gz").write_bytes(gzip.compress(b"\x00" * 100))
    nib.save(nib.Nifti1Image(np.zeros((16, 16), np.float32), np.eye(4)), str(d / "flat2d.nii.gz"))
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8, 3), np.float32), np.eye(4)), str(d / "four_d.nii.gz"))
    nan = good.copy()
    nan[3, 3, 3] = np.nan
    nib.save(nib.Nifti1Image(nan, AFFINE), str(d / "nan.nii.gz"))
    inf = good.copy()
    inf[1, 2, 3] = np.inf
    nib.save(nib.Nifti1Image(inf, AFFINE), str(d / "inf.nii.gz"))
    files["constant"] = save_volume(np.full((16, 16, 16), 7.0, np.float32), d / "constant.nii.gz", affine=AFFINE)
    files["empty_labels"] = save_volume(np.zeros((16, 16, 16), np.uint8), d / "empty_labels.nii.gz", affine=AFFINE, dtype=np.uint8)
    files["smaller"] = save_volume(good[:12], d / "smaller.nii.gz", affine=AFFINE)
    (d / "volume.xyz").write_text("unknown format")
    for name in ("truncated", "text", "garbage", "flat2d", "four_d", "nan", "inf"):
        files[name] = d / f"{name}.nii.gz"
    files["unknown_ext"] = d / "volume.xyz"
    files["missing"] = d / "does_not_exist.nii.gz"
    return files


@pytest.fixture(scope="session")
def translation_model(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("model")
    manifest = make_pairs(d)
    cfg = tiny_config(d, manifest)
    cfg["data"]["normalization"] = {"source": {"mode": "percentile", "lower": 0, "upper": 99.5},
                                    "target": {"mode": "same_as", "role": "source"}}
    cfg["train"]["steps"] = 1
    cfg["train"]["val_every"] = 0
    Trainer(cfg, quiet=True).fit()
    return d / "run" / "last.pt"


def _train_one_step(root: Path, manifest: Path, task: str, model: str) -> Path:
    cfg = load_config(None, [
        f"task={task}", f"data.manifest={manifest}", "data.crop_size=8", "data.val_fraction=0", "data.val_cases=0",
        f"model={model}", f"train.out_dir={root / task}", "train.steps=1", "train.batch_size=1", "train.val_every=0",
        "train.log_every=1", "inference.steps=2", "inference.start_step=20",
    ])
    Trainer(cfg, quiet=True).fit()
    return root / task / "last.pt"


@pytest.fixture(scope="session")
def seg_models(tmp_path_factory) -> dict[str, Path]:
    """One-step PD-DDPM (3 classes, T = 50) and preseg checkpoints."""
    root = tmp_path_factory.mktemp("seg")
    manifest = make_cases(root, n=2)
    return {
        "seg": _train_one_step(root, manifest, "segmentation",
                          "{num_classes: 3, process: {kind: ddpm, num_train_timesteps: 50}, backbone: {kind: unet, "
                          "base_channels: 4, channel_mults: [1, 2], num_res_blocks: 1, norm_groups: 2}}"),
        "preseg": _train_one_step(root, manifest, "preseg", "{num_classes: 3, channels: [4, 8], num_res_units: 0}"),
    }


@pytest.fixture(scope="session")
def synthesis_model(tmp_path_factory) -> Path:
    """One-step unconditional DDPM (T = 50) on 8^3 volumes."""
    d = tmp_path_factory.mktemp("synthesis")
    rows = ["case,image"]
    for i in range(2):
        save_volume(np.random.default_rng(i).normal(100, 20, (8, 8, 8)).astype(np.float32), d / f"i{i}.nii.gz",
                    affine=AFFINE)
        rows.append(f"i{i},i{i}.nii.gz")
    (d / "m.csv").write_text("\n".join(rows) + "\n")
    cfg = load_config(None, [
        "task=synthesis", f"data.manifest={d / 'm.csv'}", "data.crop_size=8", "data.val_fraction=0",
        "data.normalization={image: {mode: percentile, lower: 1, upper: 99, per: dataset}}",
        "model.backbone={kind: unet, base_channels: 4, channel_mults: [1, 2], num_res_blocks: 1, norm_groups: 2}",
        "model.process={kind: ddpm, num_train_timesteps: 50}",
        f"train.out_dir={d / 'run'}", "train.steps=1", "train.val_every=0", "inference.steps=2",
    ])
    Trainer(cfg, quiet=True).fit()
    return d / "run" / "last.pt"


@pytest.fixture(scope="session")
def bad_checkpoints(tmp_path_factory, translation_model) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("bad_ckpts")
    (d / "notes.pt").write_text("not a checkpoint\n")
    torch.save({"weights": torch.zeros(2)}, d / "foreign.pt")
    raw = translation_model.read_bytes()
    (d / "truncated.pt").write_bytes(raw[: len(raw) // 2])
    (d / "empty_run").mkdir()
    return {"text": d / "notes.pt", "foreign": d / "foreign.pt", "truncated": d / "truncated.pt",
            "missing": d / "missing.pt", "empty_run": d / "empty_run"}


@pytest.fixture(scope="session")
def presegs(tmp_path_factory) -> dict[str, Path]:
    """Pre-segmentations for the corpus's 16^3 grid: one good, the others broken as named."""
    d = tmp_path_factory.mktemp("preseg")
    lab = np.zeros((16, 16, 16), np.uint8)
    lab[4:12, 4:12, 4:12] = 1
    lab[6:10, 6:10, 6:10] = 2
    (d / "text.nii.gz").write_text("not labels\n")
    return {
        "ok": save_volume(lab, d / "ok.nii.gz", affine=AFFINE, dtype=np.uint8),
        "shape": save_volume(lab[:, :, :15], d / "shape.nii.gz", affine=AFFINE, dtype=np.uint8),
        "affine": save_volume(lab, d / "affine.nii.gz", affine=np.eye(4), dtype=np.uint8),
        "range": save_volume(np.where(lab == 2, 5, lab), d / "range.nii.gz", affine=AFFINE, dtype=np.uint8),
        "negative": save_volume(lab.astype(np.int16) - 1, d / "negative.nii.gz", affine=AFFINE, dtype=np.int16),
        "fractional": save_volume(lab + np.float32(0.5), d / "fractional.nii.gz", affine=AFFINE),
        "text": d / "text.nii.gz",
        "missing": d / "missing.nii.gz",
    }


@pytest.fixture(scope="session")
def parcellations(tmp_path_factory) -> Path:
    """Folders of parcellations (tables beside them): case 'a' good, case 'b' broken as the folder is named."""
    root = tmp_path_factory.mktemp("parc")
    fake_muse_tables(root)  # read from the parent of --labels-dir
    rng = np.random.default_rng(0)
    parc = np.array([0, 1, 4, 51, 52, 47, 48, 60, 81])[rng.integers(0, 9, (8, 8, 8))]
    for folder, cases in (("t1", "ab"), ("t1_only_a", "a")):
        (root / folder).mkdir()
        for cid in cases:
            save_volume(rng.random((8, 8, 8)).astype(np.float32), root / folder / f"{cid}.nii.gz", affine=AFFINE)
    (root / "empty").mkdir()
    seconds = {
        "good": lambda p: save_volume(parc, p, affine=AFFINE, dtype=np.uint8),
        "fractional": lambda p: save_volume(parc + 0.5, p, affine=AFFINE),
        "negative": lambda p: save_volume(parc - 100, p, affine=AFFINE, dtype=np.int16),
        "shape": lambda p: save_volume(parc[:7], p, affine=AFFINE, dtype=np.uint8),
        "affine": lambda p: save_volume(parc, p, affine=np.eye(4), dtype=np.uint8),
        "truncated": lambda p: p.write_bytes(gzip.compress(b"\x00" * 400)[:60]),
        "text": lambda p: p.write_text("not labels\n"),
    }
    for name, write_b in seconds.items():
        (root / name).mkdir()
        save_volume(parc, root / name / "a.nii.gz", affine=AFFINE, dtype=np.uint8)
        write_b(root / name / "b.nii.gz")
    return root


@pytest.fixture(scope="session")
def label_dirs(tmp_path_factory) -> Path:
    """BrainWeb-class label folders: a.nii.gz good, b.nii.gz broken as the folder is named."""
    root = tmp_path_factory.mktemp("pet_labels")
    lab = np.zeros((16, 16, 16), np.uint8)
    lab[3:13, 3:13, 3:13] = 2  # grey matter
    lab[5:11, 5:11, 5:11] = 3  # white matter
    seconds = {
        "good": lambda p: save_volume(lab, p, affine=AFFINE, dtype=np.uint8),
        "text": lambda p: p.write_text("not labels\n"),
        "fractional": lambda p: save_volume(lab + np.float32(0.5), p, affine=AFFINE),
        "not_brainweb": lambda p: save_volume(lab * 10, p, affine=AFFINE, dtype=np.uint8),
        "four_d": lambda p: nib.save(nib.Nifti1Image(np.stack([lab, lab], -1), AFFINE), str(p)),
    }
    for name, write_b in seconds.items():
        (root / name).mkdir()
        save_volume(lab, root / name / "a.nii.gz", affine=AFFINE, dtype=np.uint8)
        write_b(root / name / "b.nii.gz")
    (root / "empty").mkdir()
    return root
