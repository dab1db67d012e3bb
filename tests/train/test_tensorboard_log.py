"""TensorBoard events of a tiny training run: scalar tags, the montage image, resume, and the off switch."""

from __future__ import annotations

import pytest

from tests.helpers import make_pairs, tiny_config
from voxdiff.train import tensorboard as tb_mod
from voxdiff.train.trainer import Trainer

pytest.importorskip("tensorboard")


def _events(run_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc


def test_training_writes_scalars_and_the_montage(tmp_path, capsys):
    manifest = make_pairs(tmp_path)
    Trainer(tiny_config(tmp_path, manifest, steps=2, val_every=2), quiet=False).fit()
    out = capsys.readouterr().out
    assert out.count("tensorboard --logdir") == 1
    acc = _events(tmp_path / "run")
    tags = acc.Tags()
    for tag in ("train/loss", "train/lr", "train/sec_per_step", "val/out_psnr"):
        assert tag in tags["scalars"], (tag, tags["scalars"])
    assert [e.step for e in acc.Scalars("train/loss")] == [1, 2]
    assert [e.step for e in acc.Scalars("val/out_psnr")] == [2]
    lr = [e.value for e in acc.Scalars("train/lr")]
    assert lr[-1] == pytest.approx(float(open(tmp_path / "run" / "train_log.csv").read().splitlines()[-1]
                                         .split(",")[1]), rel=1e-5)
    assert tags["images"] == ["val/montage"] and acc.Images("val/montage")[0].width > 100


def test_resumed_run_logs_each_step_once(tmp_path):
    manifest = make_pairs(tmp_path)
    cfg = tiny_config(tmp_path, manifest, steps=2, val_every=0)
    Trainer(cfg, quiet=True).fit()
    cfg["train"]["steps"] = 3
    Trainer(cfg, resume=True, quiet=True).fit()
    assert [e.step for e in _events(tmp_path / "run").Scalars("train/loss")] == [1, 2, 3]


def test_without_tensorboard_training_goes_on(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(tb_mod, "tensorboard_available", lambda: False)
    manifest = make_pairs(tmp_path)
    Trainer(tiny_config(tmp_path, manifest, steps=1, val_every=0), quiet=False).fit()
    assert "pip install 'voxdiff[tensorboard]'" in capsys.readouterr().out
    assert not (tmp_path / "run" / "tb").exists() and (tmp_path / "run" / "train_log.csv").exists()
