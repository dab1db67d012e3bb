"""Unconditional synthesis task and ``voxdiff sample`` on tiny volumes."""

from __future__ import annotations

import numpy as np

from voxdiff.io import load_volume, save_volume
from voxdiff.train.config import load_config
from voxdiff.train.trainer import Trainer


def test_synthesis_train_and_sample_in_training_geometry(tmp_path, tiny_affine):
    import torch

    from voxdiff.pipelines import load_pipeline

    rng = np.random.default_rng(0)
    rows = ["case,image"]
    for i in range(3):
        vol = rng.normal(100, 20, (12, 12, 10)).astype(np.float32)
        save_volume(vol, tmp_path / f"i{i}.nii.gz", affine=tiny_affine)
        rows.append(f"i{i},i{i}.nii.gz")
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    cfg = load_config(None, [
        "task=synthesis", f"data.manifest={tmp_path / 'm.csv'}", "data.crop_size=8", "data.val_fraction=0",
        "data.normalization={image: {mode: percentile, lower: 1, upper: 99, per: dataset}}",
        "model.backbone={kind: unet, base_channels: 8, channel_mults: [1, 2], num_res_blocks: 1, norm_groups: 4}",
        f"train.out_dir={tmp_path / 'run'}", "train.steps=3", "train.val_every=0", "inference.steps=3",
    ])
    Trainer(cfg, quiet=True).fit()
    pipe, g = load_pipeline(tmp_path / "run"), torch.Generator().manual_seed(3)
    out = [tmp_path / f"s_{i}.nii.gz" for i in range(2)]
    for path in out:
        pipe(generator=g).save({"output": path})
    a, b = load_volume(out[0]), load_volume(out[1])
    assert a.shape == (12, 12, 10) and np.allclose(a.affine, tiny_affine)
    assert not np.array_equal(a.array, b.array), "two draws differ"
    # Written in the training data's units (dataset percentile range of ~100 +- 20), not in [-1, 1].
    assert 20 < float(np.median(a.array)) < 200
