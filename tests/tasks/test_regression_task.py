"""The ``regression`` task (supervised UNet baseline): trained by ``voxdiff train``, served by ``translate``."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from voxdiff.errors import VoxdiffError
from voxdiff.io import load_volume
from voxdiff.tasks import build_task, tasks_for_entry_point
from voxdiff.train.config import load_config
from voxdiff.train.trainer import Trainer
from tests.helpers import assert_user_error, make_pairs, run_main

BACKBONE = "model.backbone={kind: unet, base_channels: 8, channel_mults: [1, 2], num_res_blocks: 1, norm_groups: 4}"


def _config(tmp_path, manifest, *more):
    return load_config(None, [
        "task=regression", f"data.manifest={manifest}", "data.crop_size=8", "data.val_fraction=0.34",
        "data.val_cases=1",
        "data.normalization={source: {mode: range, lo: -50, hi: 200}, target: {mode: same_as, role: source}}",
        BACKBONE, f"train.out_dir={tmp_path / 'run'}", "train.steps=60", "train.batch_size=4", "train.lr=2e-3",
        "train.val_every=60", "train.ckpt_every=60", "train.log_every=1", "train.ema_decay=0", *more])


def test_regression_learns_and_is_one_deterministic_pass():
    torch.manual_seed(0)
    task = build_task("regression", {"backbone": {"kind": "unet", "base_channels": 8, "channel_mults": [1, 2],
                                                  "num_res_blocks": 1, "norm_groups": 4}, "loss": "l2"})
    g = torch.Generator().manual_seed(0)
    target = torch.rand(2, 1, 8, 8, 8, generator=g)
    batch = {"target": target, "source": target + 0.3 * torch.randn(target.shape, generator=g)}
    opt = torch.optim.Adam(task.parameters(), lr=3e-3)
    losses = []
    for _ in range(60):
        opt.zero_grad()
        loss, logs = task(batch)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert "l2" in logs and losses[-1] < 0.5 * losses[0]
    task.eval()
    a = task.predict({"source": batch["source"]})["output"]
    b = task.predict({"source": batch["source"]})["output"]
    assert torch.equal(a, b) and a.shape == target.shape
    assert task.schedule({}).nfe == 1
    with pytest.raises(VoxdiffError, match="--steps"):
        task.schedule({}, steps=5)
    with pytest.raises(VoxdiffError, match="--samples"):
        task.schedule({}, samples=3)


def test_regression_is_served_by_translate_in_the_input_geometry(tmp_path, tiny_affine, capsys):
    assert "regression" in tasks_for_entry_point("translate")
    manifest = make_pairs(tmp_path, affine=tiny_affine)
    Trainer(_config(tmp_path, manifest), quiet=True).fit()
    out = tmp_path / "out.nii.gz"
    code, _, _ = run_main(["translate", "-m", tmp_path / "run", "-i", tmp_path / "c0_src.nii.gz", "-o", out], capsys)
    assert code == 0
    pred, src, tgt = (load_volume(p) for p in (out, tmp_path / "c0_src.nii.gz", tmp_path / "c0_tgt.nii.gz"))
    assert pred.shape == src.shape and np.allclose(pred.affine, tiny_affine)
    # 60 steps of a residual UNet already remove part of the noise, in the target's units.
    err_pred, err_src = np.abs(pred.array - tgt.array).mean(), np.abs(src.array - tgt.array).mean()
    assert err_pred < err_src, (err_pred, err_src)
    line = assert_user_error(*run_main(["translate", "-m", tmp_path / "run", "-i", tmp_path / "c0_src.nii.gz",
                                        "-o", tmp_path / "o2.nii.gz", "-n", "2", "-u", tmp_path / "u.nii.gz"], capsys))
    assert "regression" in line and not (tmp_path / "o2.nii.gz").exists()
