"""``voxdiff demo --task synthesize`` with a tiny stand-in synthesis model."""

from __future__ import annotations

import csv
import json
from types import SimpleNamespace

import numpy as np
import pytest

from voxdiff.demo import synthesis_files
from voxdiff.demo.synthesize import _model_grid
from voxdiff.errors import VoxdiffError
from tests.demo.test_demo_segment import PSR
from tests.helpers import cli_exit_code
from voxdiff.io import load_volume, save_volume



@pytest.fixture(scope="module")
def tiny_synthesis(tmp_path_factory):
    """A synthesis model on 24 x 24 x 20 PSR heads at 2 mm, trained at 4 mm (data.downsample 2), per-case scaling."""
    from voxdiff.train.config import load_config
    from voxdiff.train.trainer import Trainer

    root = tmp_path_factory.mktemp("synth")
    rng = np.random.default_rng(0)
    g = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in (24, 24, 20)], indexing="ij"))
    rows = ["case,image"]
    for i in range(3):
        r = np.sqrt((g ** 2).sum(0)) * rng.uniform(0.9, 1.1)
        img = np.select([r < 0.4, r < 0.7, r < 0.85], [600.0, 430.0, 150.0], 0.0) + rng.normal(0, 10, r.shape)
        save_volume(img.clip(0).astype(np.float32), root / f"h{i}.nii.gz", affine=PSR)
        rows.append(f"h{i},h{i}.nii.gz")
    (root / "m.csv").write_text("\n".join(rows) + "\n")
    cfg = load_config(None, [
        "task=synthesis", f"data.manifest={root / 'm.csv'}", "data.downsample=2", "data.crop_size=null",
        "data.val_fraction=0", "data.normalization={image: {mode: percentile, lower: 0.0, upper: 99.5}}",
        "model.backbone={kind: unet, base_channels: 8, channel_mults: [1, 2], num_res_blocks: 1, norm_groups: 4}",
        f"train.out_dir={root / 'run'}", "train.steps=2", "train.val_every=0", "inference.steps=3"])
    Trainer(cfg, quiet=True).fit()
    return root / "run" / "last.pt"


def test_synthesize_demo_writes_samples_template_checks_and_montage(tiny_synthesis, tmp_path, capsys, monkeypatch):
    import socket

    def refuse(*args, **kwargs):
        raise AssertionError("the demo tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    import torch

    out = tmp_path / "demo"
    code = cli_exit_code(["demo", "--task", "synthesize", "--model", tiny_synthesis, "--samples", 2, "--steps", 2, "-o", out])
    assert code == 0
    printed = capsys.readouterr().out
    assert "W1 to template" in printed and "sample_1" in printed
    for name in synthesis_files(2):
        assert (out / name).is_file(), name
    geo = torch.load(tiny_synthesis, map_location="cpu", weights_only=False)["reference_geometry"]
    a, b = load_volume(out / "sample_0.nii.gz"), load_volume(out / "sample_1.nii.gz")
    assert a.shape == (12, 12, 10) == tuple(geo["shape"]) and np.allclose(a.affine, geo["affine"])
    assert not np.array_equal(a.array, b.array), "two draws differ"
    template = load_volume(out / "template.nii.gz")
    assert template.shape == a.shape and template.orientation == "PSR" and template.spacing == (4.0, 4.0, 4.0)
    # Per-case percentile 0-99.5 scaling: the template is in the training's normalised units.
    assert template.array.min() == pytest.approx(-1.0) and template.array.max() == pytest.approx(1.0)
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["sampler"] == "dpmsolver++" and summary["steps"] == 2 and summary["samples"] == 2
    assert [r["volume"] for r in summary["checks"]] == ["template", "sample_0", "sample_1"]
    for r in summary["checks"]:
        assert r["head_litres"] > 0 and r["dark"] <= r["middle"] <= r["bright"]
        assert (r["w1_to_template"] is None) == (r["volume"] == "template")
    assert all(r["w1_to_template"] >= 0 for r in summary["checks"][1:])
    assert summary["pairwise_rmse"] > 0
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert [r["volume"] for r in rows] == ["template", "sample_0", "sample_1"] and rows[0]["w1_to_template"] == ""
    assert (out / "montage.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_synthesize_demo_refuses_missing_model_and_bad_options(tiny_synthesis, tmp_path, capsys):
    cases = [
        (["--task", "synthesize", "--model", "pretrained:no-such-model"], "no-such-model"),
        (["--task", "synthesize", "--samples", 0], "--samples"),
        (["--task", "synthesize", "--steps", 0], "--steps"),
        (["--task", "synthesize", "--preseg-model", tiny_synthesis], "--preseg-model"),
        (["--task", "synthesize", "--model", tiny_synthesis, "--sampler", "euler"], "sampler"),
        (["--task", "translate", "--sampler", "ddim"], "--sampler"),
    ]
    for i, (args, needle) in enumerate(cases):
        out = tmp_path / f"o{i}"
        assert cli_exit_code(["demo", *args, "-o", out]) == 2, args
        err = capsys.readouterr().err
        assert err.startswith("error:") and needle in err and err.strip().count("\n") == 0, (args, err)
        assert "Traceback" not in err and not out.exists(), args


def test_model_grid_must_be_2mm_times_the_downsampling():
    aff = PSR.copy()
    aff[:3, :3] *= 1.5  # 3 mm voxels: not 2 mm x an integer factor of 2
    pipe = SimpleNamespace(checkpoint={"reference_geometry": {"shape": [8, 8, 8], "affine": aff.tolist()},
                                       "config": {"data": {"downsample": 2}}})
    with pytest.raises(VoxdiffError, match="3.0, 3.0, 3.0"):
        _model_grid(pipe, "m.pt")
    pipe.checkpoint["config"]["data"]["downsample"] = 1
    pipe.checkpoint["reference_geometry"]["affine"] = PSR.tolist()
    assert _model_grid(pipe, "m.pt") == ((8, 8, 8), "PSR", 1, 2.0)
    with pytest.raises(VoxdiffError, match="no reference geometry"):
        _model_grid(SimpleNamespace(checkpoint={"config": {}}), "m.pt")
