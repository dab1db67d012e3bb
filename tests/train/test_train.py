"""Trainer, checkpoints and translate on tiny synthetic pairs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers import add_noisier_column, make_pairs, tiny_config
from voxdiff.errors import VoxdiffError
from voxdiff.io import load_volume, save_volume
from voxdiff.train.checkpoint import load_checkpoint, save_checkpoint
from voxdiff.train.trainer import Trainer, stream_items


def test_stream_items_is_a_pure_function_of_seed_and_position():
    a = stream_items(3, 5, 0, 12)
    assert a == stream_items(3, 5, 0, 12)
    assert [i for e, i in a[:5]] != [i for e, i in a[5:10]] or True  # permutations differ per epoch (usually)
    assert sorted(i for e, i in a[:5]) == list(range(5))
    assert a[7:9] == stream_items(3, 5, 7, 2)


def test_training_runs_validates_and_checkpoints(tmp_path):
    manifest = make_pairs(tmp_path)
    cfg = tiny_config(tmp_path, manifest)
    tr = Trainer(cfg, quiet=True)
    summary = tr.fit()
    run = tmp_path / "run"
    assert summary["steps"] == 4
    assert (run / "last.pt").exists() and (run / "config.yaml").exists()
    assert (run / "train_log.csv").exists() and (run / "val_log.csv").exists()
    assert list(run.glob("val_step*.png")) and (run / "curves.png").exists()
    assert "out_psnr" in summary["val"] and np.isfinite(summary["val"]["out_psnr"])
    ckpt = load_checkpoint(run / "last.pt", task="translation")
    assert ckpt["step"] == 4 and ckpt["config"]["model"]["puzzle_factor"] == 2
    assert not list(run.glob(".*tmp*")), "no temporary files left behind"


def test_resume_equals_uninterrupted(tmp_path):
    manifest = make_pairs(tmp_path)
    full = Trainer(tiny_config(tmp_path / "a", manifest), quiet=True)
    full.fit()
    cfg_b = tiny_config(tmp_path / "b", manifest)
    cfg_b["train"]["steps"] = 2
    Trainer(cfg_b, quiet=True).fit()
    cfg_b["train"]["steps"] = 4
    resumed = Trainer(cfg_b, resume=True, quiet=True)
    assert resumed.step == 2
    resumed.fit()
    for (k, a), b in zip(full.task.state_dict().items(), resumed.task.state_dict().values()):
        assert torch.equal(a, b), k


def test_checkpoint_guards(tmp_path):
    bogus = tmp_path / "x.pt"
    torch.save({"hello": 1}, bogus)
    with pytest.raises(VoxdiffError, match="not a voxdiff checkpoint"):
        load_checkpoint(bogus)
    (tmp_path / "text.pt").write_text("nonsense")
    with pytest.raises(VoxdiffError, match="not a loadable"):
        load_checkpoint(tmp_path / "text.pt")
    save_checkpoint(tmp_path / "seg.pt", {"task": "segmentation"})
    with pytest.raises(VoxdiffError, match="task 'segmentation'"):
        load_checkpoint(tmp_path / "seg.pt", task="translation")


def test_translate_keeps_geometry_and_units(tmp_path, tiny_affine):
    from voxdiff.pipelines import load_pipeline

    manifest = make_pairs(tmp_path, affine=tiny_affine)
    Trainer(tiny_config(tmp_path, manifest), quiet=True).fit()
    src = load_volume(tmp_path / "c0_src.nii.gz")
    # Odd shape: inference must pad to the network multiple and crop back.
    odd = src.array[:15, :14, :13]
    save_volume(odd, tmp_path / "odd.nii.gz", affine=tiny_affine)
    out, unc = tmp_path / "out.nii.gz", tmp_path / "unc.nii.gz"
    load_pipeline(tmp_path / "run" / "last.pt")(tmp_path / "odd.nii.gz", steps=2, samples=3).save(
        {"output": out, "std": unc})
    pred, u = load_volume(out), load_volume(unc)
    assert pred.shape == (15, 14, 13) and np.allclose(pred.affine, tiny_affine)
    assert u.shape == pred.shape and (u.array >= 0).all() and u.array.max() > 0
    # Target units: range scaler on [-50, 200] -> outputs live near that range, not in [-1, 1].
    assert pred.array.max() > 5


def test_sliding_window_matches_shape(tmp_path):
    from voxdiff.pipelines import load_pipeline

    manifest = make_pairs(tmp_path)
    Trainer(tiny_config(tmp_path, manifest), quiet=True).fit()
    out = tmp_path / "sw.nii.gz"
    load_pipeline(tmp_path / "run" / "last.pt")(tmp_path / "c1_src.nii.gz", steps=1, sw_roi=8).save({"output": out})
    assert load_volume(out).shape == (16, 16, 16)


def test_role_alternatives_train_on_every_column_and_keep_the_subject_split(tmp_path):
    # A second source column per subject (another "dose"): twice the noise of the first.
    manifest = add_noisier_column(make_pairs(tmp_path, n=4))
    plain = Trainer(tiny_config(tmp_path / "a", manifest), quiet=True)
    cfg = tiny_config(tmp_path / "b", manifest)
    cfg["data"]["roles"] = {"source": ["source", "noisier"]}
    mixed = Trainer(cfg, quiet=True)
    assert mixed.split == plain.split  # subjects, not (subject, column) pairs, are split
    train_ids = [c.id for c in mixed.train_set.cases]
    assert len(train_ids) == 2 * len(plain.train_set.cases)
    assert sorted(train_ids) == sorted(f"{s}:{col}" for s in mixed.split["train"] for col in ("source", "noisier"))
    assert [c.id for c in mixed.val_set.cases] == [c.id for c in plain.val_set.cases]  # validation: the first column
    assert mixed.val_set.cases[0].paths["source"] == plain.val_set.cases[0].paths["source"]
    mixed.fit()
    cfg["data"]["roles"] = {"source": ["source", "source"]}
    cfg["train"]["out_dir"] = str(tmp_path / "c")
    with pytest.raises(VoxdiffError, match="lists a column twice"):
        Trainer(cfg, quiet=True)


def test_zipped_alternatives_pair_each_source_with_its_own_target(tmp_path):
    # Per-dose targets (a complement image per low dose): source[i] trains against target[i] only.
    import shutil

    manifest = add_noisier_column(make_pairs(tmp_path, n=4))
    lines = manifest.read_text().splitlines()
    rows = [lines[0] + ",target_b"]
    for ln in lines[1:]:
        case = ln.split(",")[0]
        shutil.copy(tmp_path / f"{case}_tgt.nii.gz", tmp_path / f"{case}_tgt_b.nii.gz")
        rows.append(f"{ln},{case}_tgt_b.nii.gz")
    manifest.write_text("\n".join(rows) + "\n")
    cfg = tiny_config(tmp_path / "z", manifest)
    cfg["data"]["roles"] = {"source": ["source", "noisier"], "target": ["target", "target_b"]}
    product = Trainer(cfg, quiet=True)
    assert len(product.train_set.cases) == 4 * len(product.split["train"])
    cfg["data"]["alternatives"] = "zip"
    cfg["train"]["out_dir"] = str(tmp_path / "z2")
    zipped = Trainer(cfg, quiet=True)
    assert zipped.split == product.split
    pairs = sorted((Path(c.paths["source"]).name, Path(c.paths["target"]).name) for c in zipped.train_set.cases)
    assert pairs == sorted(p for s in zipped.split["train"]
                           for p in ((f"{s}_src.nii.gz", f"{s}_tgt.nii.gz"), (f"{s}_noisier.nii.gz", f"{s}_tgt_b.nii.gz")))
    assert [Path(c.paths["target"]).name for c in zipped.val_set.cases] == [
        f"{c}_tgt.nii.gz" for c in zipped.split["val"][: len(zipped.val_set.cases)]]   # validation: the first pair
    zipped.fit()
    cfg["data"]["roles"]["target"] = ["target", "target_b", "noisier"]
    cfg["train"]["out_dir"] = str(tmp_path / "z3")
    with pytest.raises(VoxdiffError, match="zip needs the same number of columns"):
        Trainer(cfg, quiet=True)
    assert not (tmp_path / "z3").exists()


@pytest.mark.parametrize("fast", [False, True])
def test_bf16_on_a_cpu_without_native_bf16_warns_once(tmp_path, capsys, monkeypatch, fast):
    from voxdiff.train import trainer as trainer_mod

    assert isinstance(trainer_mod.cpu_bf16_is_fast(), bool)  # the real probe answers on any build
    monkeypatch.setattr(trainer_mod, "cpu_bf16_is_fast", lambda: fast)
    manifest = make_pairs(tmp_path)
    Trainer(tiny_config(tmp_path, manifest, steps=1, val_every=0, precision="bf16"), quiet=False).fit()
    out = capsys.readouterr().out
    assert out.count("slower than fp32") == (0 if fast else 1), out
