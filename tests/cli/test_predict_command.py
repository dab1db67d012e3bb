"""``voxdiff predict``: any checkpoint, dispatched on its task."""

from __future__ import annotations

import numpy as np

from tests.helpers import assert_user_error, make_pairs, run_main, tiny_config
from voxdiff.io import load_volume
from voxdiff.train.trainer import Trainer


def test_predict_describes_and_runs_a_translation_model(tmp_path, capsys):
    manifest = make_pairs(tmp_path)
    Trainer(tiny_config(tmp_path, manifest), quiet=True).fit()
    code, out, _ = run_main(["predict", "-m", tmp_path / "run", "--describe"], capsys)
    assert code == 0 and "task 'translation'" in out and "std" in out and "voxdiff translate" in out
    o, u = tmp_path / "o.nii.gz", tmp_path / "u.nii.gz"
    code, out, err = run_main(["predict", "-m", tmp_path / "run", "-i", tmp_path / "c0_src.nii.gz", "-o", o,
                               "-n", "2", "--save", f"std={u}", "-k", "2"], capsys)
    assert code == 0, err
    assert load_volume(o).shape == (16, 16, 16) and (load_volume(u).array >= 0).all()
    # The same model through translate gives the same output for the same seed.
    o2 = tmp_path / "o2.nii.gz"
    assert run_main(["translate", "-m", tmp_path / "run", "-i", tmp_path / "c0_src.nii.gz", "-o", o2,
                     "-n", "2", "-k", "2"], capsys)[0] == 0
    np.testing.assert_array_equal(load_volume(o).array, load_volume(o2).array)
    for args, word in ((["--save", "labels=x.nii.gz"], "no output 'labels'"), (["--save", "std"], "NAME=PATH"),
                       (["--start", tmp_path / "c1_src.nii.gz"], "start volume")):
        line = assert_user_error(*run_main(["predict", "-m", tmp_path / "run", "-i", tmp_path / "c0_src.nii.gz",
                                            "-o", tmp_path / "bad.nii.gz", "-n", "2", *args], capsys))
        assert word in line, line
    assert not (tmp_path / "bad.nii.gz").exists()
