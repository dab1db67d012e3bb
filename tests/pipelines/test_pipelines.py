"""The library's inference layer: load_pipeline on every kind of input, outputs in the input's geometry."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from voxdiff.errors import VoxdiffError
from voxdiff.io import Volume, load_volume, save_volume
from voxdiff.pipelines import as_volume, load_pipeline
from voxdiff.train.trainer import Trainer
from tests.helpers import make_pairs, tiny_config


@pytest.fixture(scope="module")
def translation_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipe")
    manifest = make_pairs(root, affine=np.diag([2.0, 2.0, 2.5, 1.0]))
    Trainer(tiny_config(root, manifest), quiet=True).fit()
    return root


def test_readme_three_lines_denoise_a_volume(tmp_path, tiny_affine):
    low = np.random.default_rng(0).poisson(40, (20, 18, 16)).astype(np.float32)
    save_volume(low, tmp_path / "low.nii.gz", affine=tiny_affine)
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        from voxdiff import load_pipeline as lp  # the README's lines, verbatim

        out = lp("pretrained:pet-denoise")("low.nii.gz", samples=4)
        out.save({"output": "denoised.nii.gz", "std": "std.nii.gz"})
    finally:
        os.chdir(cwd)
    den, std = load_volume(tmp_path / "denoised.nii.gz"), load_volume(tmp_path / "std.nii.gz")
    assert den.shape == low.shape and np.allclose(den.affine, tiny_affine)
    assert (std.array >= 0).all() and std.array.max() > 0
    assert out.info["samples"] == 4 and out.info["nfe"] == 4 * out.info["steps"]
    # A denoiser of a flat Poisson field is smoother than its input.
    assert den.array.std() < low.std()


def test_every_input_kind_gives_the_same_prediction(translation_run):
    pipe = load_pipeline(translation_run / "run")
    vol = load_volume(translation_run / "c0_src.nii.gz")
    from monai.data import MetaTensor

    meta = MetaTensor(torch.as_tensor(vol.array)[None], affine=torch.as_tensor(vol.affine))
    outs = [pipe(x, steps=2, seed=3)["output"] for x in
            (translation_run / "c0_src.nii.gz", vol, (vol.array, vol.affine), meta, str(translation_run / "c0_src.nii.gz"))]
    for o in outs:
        assert o.shape == vol.shape and np.allclose(o.affine, vol.affine)
        np.testing.assert_array_equal(o.array, outs[0].array)
    # Units: the target's range scaler, not the network's [-1, 1].
    assert outs[0].array.max() > 5
    # No affine: the identity, and the output carries it.
    bare = pipe(vol.array, steps=1)["output"]
    assert np.allclose(bare.affine, np.eye(4))


def test_seed_fixes_the_result_and_outputs_are_checked(translation_run):
    pipe = load_pipeline(translation_run / "run")
    src = translation_run / "c1_src.nii.gz"
    a = pipe(src, steps=2, samples=2, seed=1)
    b = pipe(src, steps=2, samples=2, seed=1)
    c = pipe(src, steps=2, samples=2, seed=2)
    np.testing.assert_array_equal(a["output"].array, b["output"].array)
    assert not np.array_equal(a["std"].array, c["std"].array)
    assert "std" not in pipe(src, steps=1)
    with pytest.raises(VoxdiffError, match="needs --samples 2"):
        pipe.check_outputs(["output", "std"], samples=1)
    with pytest.raises(VoxdiffError, match="no output 'labels'"):
        pipe.check_outputs(["labels"])
    with pytest.raises(VoxdiffError, match="--steps"):
        pipe(src, steps=0)
    with pytest.raises(VoxdiffError, match="--start-step"):
        pipe(src, start_step=3)


def test_as_volume_refuses_what_has_no_geometry():
    with pytest.raises(VoxdiffError, match="3D"):
        as_volume(np.zeros((4, 4)))
    with pytest.raises(VoxdiffError, match="singular"):
        as_volume(np.zeros((4, 4, 4)), affine=np.zeros((4, 4)))
    with pytest.raises(VoxdiffError, match="NaN"):
        as_volume(np.full((4, 4, 4), np.nan))
    v = as_volume(np.ones((1, 4, 4, 4)), affine=np.diag([2, 2, 2, 1.0]))
    assert isinstance(v, Volume) and v.shape == (4, 4, 4) and v.spacing == (2.0, 2.0, 2.0)
