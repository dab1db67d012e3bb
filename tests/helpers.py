"""Shared test helpers (not a test module): tiny data sets, tiny configs and models, CLI runners.

Imported by test modules in several subfolders as ``from tests.helpers import ...``.
"""

from __future__ import annotations

import hashlib

import os
import socket
from pathlib import Path

import numpy as np
import pytest

from voxdiff.io import save_volume


# ----------------------------------------------------------------------------- tiny data sets
def make_pairs(root, n=3, size=16, affine=None, seed=0):
    """Tiny smooth 'anatomy' + noisy source; returns the manifest path."""
    rng = np.random.default_rng(seed)
    affine = np.diag([2.0, 2.0, 2.5, 1.0]) if affine is None else affine
    rows = ["case,source,target"]
    g = np.stack(np.meshgrid(*[np.linspace(-1, 1, size)] * 3, indexing="ij"))
    for i in range(n):
        c = rng.uniform(-0.3, 0.3, 3)
        r = np.sqrt(((g - c[:, None, None, None]) ** 2).sum(0))
        target = (100 * (r < 0.6) + 40 * (r < 0.9)).astype(np.float32)
        source = target + rng.normal(0, 15, target.shape).astype(np.float32)
        save_volume(source, root / f"c{i}_src.nii.gz", affine=affine)
        save_volume(target, root / f"c{i}_tgt.nii.gz", affine=affine)
        rows.append(f"c{i},c{i}_src.nii.gz,c{i}_tgt.nii.gz")
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    return root / "manifest.csv"


def add_noisier_column(manifest, factor=2.0):
    """Add a ``noisier`` source column to a ``make_pairs`` manifest (another "dose": ``factor`` x the noise)."""
    from voxdiff.io import load_volume

    root = manifest.parent
    lines = manifest.read_text().splitlines()
    rows = [lines[0] + ",noisier"]
    for line in lines[1:]:
        case, src, tgt = line.split(",")
        v, t = load_volume(root / src), load_volume(root / tgt)
        save_volume(t.array + factor * (v.array - t.array), root / f"{case}_noisier.nii.gz", affine=v.affine)
        rows.append(f"{line},{case}_noisier.nii.gz")
    manifest.write_text("\n".join(rows) + "\n")
    return manifest


def make_cases(root, n=3, size=16, affine=None):
    """Spheres and a shell (labels 1, 2) with class-dependent intensities; returns the manifest path."""
    rng = np.random.default_rng(0)
    affine = np.diag([2.0, 2.0, 2.5, 1.0]) if affine is None else affine
    g = np.stack(np.meshgrid(*[np.linspace(-1, 1, size)] * 3, indexing="ij"))
    rows = ["case,image,label"]
    for i in range(n):
        c = rng.uniform(-0.2, 0.2, 3)
        r = np.sqrt(((g - c[:, None, None, None]) ** 2).sum(0))
        lab = (1 * (r < 0.45) + 2 * ((r >= 0.45) & (r < 0.75))).astype(np.uint8)
        img = (np.array([10.0, 120.0, 60.0])[lab] + rng.normal(0, 5, lab.shape)).astype(np.float32)
        save_volume(img, root / f"c{i}_img.nii.gz", affine=affine)
        save_volume(lab, root / f"c{i}_lab.nii.gz", affine=affine, dtype=np.uint8)
        rows.append(f"c{i},c{i}_img.nii.gz,c{i}_lab.nii.gz")
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    return root / "manifest.csv"


def fake_muse_tables(folder):
    """Write tiny MUSE region tables (single labels and derived regions) into ``folder``."""
    (folder / "muse_single_labels.csv").write_text(
        "Index,Code,Name\n4,MUSE_4,3rdVentricle\n47,MUSE_47,Hippocampus_R\n48,MUSE_48,Hippocampus_L\n"
        "51,MUSE_51,LateralVentricle_R\n52,MUSE_52,LateralVentricle_L\n60,MUSE_60,Thalamus_L\n"
        "81,MUSE_81,FrontalWM_R\n")
    pad = "," * 12
    (folder / "muse_derived_mapping.csv").write_text(
        f"600,CorticalCSF,1{pad}\n509,Ventricles,4,51,52{pad}\n601,GM,47,48,60{pad}\n604,WM,81{pad}\n"
        f"47,Hippocampus_R,47{pad}\n")


def muse_sim_tables(folder):
    """Write tiny MUSE tables with the composites the PET simulator needs (ICV 702, TotalBrain 701); returns ``folder``.

    Labels: 1 cortical CSF, 4 3rd ventricle, 36 caudate, 47 hippocampus, 59 thalamus, 81 frontal WM,
    142 middle frontal gyrus (cortical GM).
    """
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "muse_single_labels.csv").write_text(
        "Index,Code,Name\n4,MUSE_4,3rdVentricle\n36,MUSE_36,Caudate_R\n47,MUSE_47,Hippocampus_R\n"
        "59,MUSE_59,ThalamusProper_R\n81,MUSE_81,Frontal_WM_R\n142,MUSE_142,MiddleFrontalGyrus_R\n")
    (folder / "muse_derived_mapping.csv").write_text(
        "702,ICV,1,4,36,47,59,81,142,,\n701,TotalBrain,4,36,47,59,81,142,,,\n600,CorticalCSF,1,,,,,,,,\n"
        "601,GM,36,47,59,142,,,,,\n604,WM,81,,,,,,,,\n509,Ventricles,4,,,,,,,,\n")
    return folder


# ----------------------------------------------------------------------------- tiny configs and models
def tiny_config(tmp_path, manifest, **train):
    """A translation config for ``make_pairs`` data: 8^3 crops, a 2-level UNet, 4 steps; ``train`` overrides."""
    from voxdiff.train.config import load_config

    overrides = [
        f"data.manifest={manifest}",
        "data.crop_size=8", "data.val_fraction=0.34", "data.val_cases=1",
        "data.normalization={source: {mode: range, lo: -50, hi: 200}, target: {mode: same_as, role: source}}",
        "model.backbone={kind: unet, base_channels: 16, channel_mults: [1, 2], num_res_blocks: 1, norm_groups: 4}",
        "model.puzzle_factor=2",
        f"train.out_dir={tmp_path / 'run'}",
        "train.steps=4", "train.batch_size=2", "train.val_every=4", "train.ckpt_every=2",
        "train.log_every=1", "inference.steps=2",
    ] + [f"train.{k}={v}" for k, v in train.items()]
    return load_config(None, overrides)


def train_tiny(root, manifest, task, model):
    """Train ``task`` (segmentation or preseg) for 2 steps on ``make_cases`` data; returns last.pt."""
    from voxdiff.train.config import load_config
    from voxdiff.train.trainer import Trainer

    cfg = load_config(None, [
        f"task={task}", f"data.manifest={manifest}", "data.crop_size=8", "data.val_fraction=0.34",
        "data.val_cases=1", f"model={model}", f"train.out_dir={root / task}", "train.steps=2",
        "train.batch_size=2", "train.val_every=2", "train.ckpt_every=2", "train.log_every=1",
        "inference.steps=2", "inference.start_step=20",
    ])
    summary = Trainer(cfg, quiet=True).fit()
    assert "dice" in summary["val"] and 0.0 <= summary["val"]["dice"] <= 1.0
    return root / task / "last.pt"


# ----------------------------------------------------------------------------- the command line
def run_main(args: list[str], capsys) -> tuple[int, str, str]:
    """Run the console entry point in-process: (exit code, stdout, stderr) with main()'s error handling."""
    from voxdiff.cli import main

    capsys.readouterr()
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    out = capsys.readouterr()
    return code, out.out, out.err


def assert_user_error(code: int, out: str, err: str, *names: str) -> str:
    """Exit 2, one 'error:' line naming the file(s), no traceback."""
    assert code == 2, (code, out, err)
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    assert "Traceback" not in out + err
    for name in names:
        assert name in lines[0], (name, lines[0])
    return lines[0]


def cli_exit_code(argv) -> int:
    """Run the console entry point in-process; the exit code it ends with (it must end with SystemExit)."""
    from voxdiff.cli import main

    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in argv])
    return int(exc.value.code or 0)


# ----------------------------------------------------------------------------- subprocesses
def subprocess_env() -> dict:
    """The environment for child interpreters: one thread, the repository on PYTHONPATH (``tests.*`` imports)."""
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[1]), env.get("PYTHONPATH", "")])
    return env


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now (for torchrun / gloo rendezvous)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def digest(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder`` (hidden ones included)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}
