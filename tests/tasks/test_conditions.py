"""Scalar conditions (the dose as an input): encoding, dropout, training, serving, refusals."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tests.helpers import add_noisier_column, make_pairs, run_main, tiny_config
from voxdiff.errors import VoxdiffError
from voxdiff.io import load_volume
from voxdiff.tasks.conditions import ScalarConditions, parse_conditions


def test_encode_feeds_log_values_with_a_given_flag_and_dropout_hides_both():
    sc = ScalarConditions({"dose": "log"}, dropout=0.5)
    feats = sc.encode(torch.tensor([[5.0], [1.0]]), 2)
    assert feats.shape == (2, 2)
    assert feats[:, 0].tolist() == pytest.approx([math.log(5.0), 0.0])
    assert feats[:, 1].tolist() == [1.0, 1.0]
    assert sc.encode(None, 3).abs().sum() == 0  # blind
    g = torch.Generator().manual_seed(0)
    dropped = sc.encode(torch.full((400, 1), 5.0), 400, generator=g, drop=True)
    hidden = dropped[:, 1] == 0
    assert 0.35 < hidden.float().mean() < 0.65
    assert (dropped[hidden] == 0).all() and (dropped[~hidden, 0] == pytest.approx(math.log(5.0)))
    # per-item generators: item i's draw depends only on generator i
    gens = [torch.Generator().manual_seed(k) for k in range(4)]
    a = sc.encode(torch.full((4, 1), 5.0), 4, generator=gens, drop=True)
    gens = [torch.Generator().manual_seed(k) for k in range(4)]
    b = sc.encode(torch.full((2, 1), 5.0), 2, generator=gens[2:], drop=True)
    assert torch.equal(a[2:], b)
    maps = sc.maps(feats, torch.zeros(4, 1, 3, 5, 2))  # 2 samples per input volume
    assert maps.shape == (4, 2, 3, 5, 2) and torch.all(maps[1, 0] == math.log(5.0)) and torch.all(maps[2, 0] == 0)


def test_vector_validates_what_a_user_gives():
    strict, optional, none = ScalarConditions({"dose": "log"}), ScalarConditions({"dose": "log"}, 0.2), ScalarConditions({})
    assert strict.vector({"dose": 5}).tolist() == [[5.0]]
    assert optional.vector(None) is None and none.vector(None) is None
    with pytest.raises(VoxdiffError, match="always given: pass --condition dose=VALUE"):
        strict.vector(None)
    with pytest.raises(VoxdiffError, match="takes no conditions"):
        none.vector({"dose": 5})
    with pytest.raises(VoxdiffError, match="not counts"):
        strict.vector({"counts": 5})
    with pytest.raises(VoxdiffError, match="must be positive"):
        strict.vector({"dose": 0})
    with pytest.raises(VoxdiffError, match="must be one of log, linear"):
        ScalarConditions({"dose": "sqrt"})
    with pytest.raises(VoxdiffError, match="names no condition"):
        ScalarConditions({}, 0.1)
    assert parse_conditions(["dose=5", " k = 2.5"]) == {"dose": 5.0, "k": 2.5}
    for bad, msg in ((["dose"], "NAME=VALUE"), (["dose=x"], "not a number"), (["dose=1", "dose=2"], "twice")):
        with pytest.raises(VoxdiffError, match=msg):
            parse_conditions(bad)


def _two_dose_manifest(tmp_path):
    """make_pairs plus a second source per subject with twice the noise (the 'lower dose')."""
    return add_noisier_column(make_pairs(tmp_path, n=4))


def _dose_config(tmp_path, manifest, dropout=0.3):
    cfg = tiny_config(tmp_path, manifest)
    cfg["data"]["roles"] = {"source": ["source", "noisier"], "target": "target"}
    cfg["data"]["conditions"] = {"dose": {"source": 20, "noisier": 5}}
    cfg["model"]["conditions"] = {"dose": "log"}
    cfg["model"]["condition_dropout"] = dropout
    return cfg


def test_a_dose_conditioned_model_trains_serves_with_and_without_the_dose_and_refuses_bad_values(tmp_path, capsys):
    from voxdiff.pipelines import load_pipeline
    from voxdiff.train.trainer import Trainer

    manifest = _two_dose_manifest(tmp_path)
    tr = Trainer(_dose_config(tmp_path, manifest), quiet=True)
    values = {c.id: float(c.meta["dose"]) for c in tr.train_set.cases}
    assert values and all(v == (5.0 if cid.endswith(":noisier") else 20.0) for cid, v in values.items())
    assert tr.val_set.cases[0].meta["dose"] == "20.0"  # validation reads the first column
    assert tr.train_set[0]["conditions"].dtype == torch.float64
    tr.fit()
    pipe = load_pipeline(tmp_path / "run" / "last.pt")
    src = tmp_path / "c1_src.nii.gz"
    given = pipe(src, steps=2, conditions={"dose": 20})
    other = pipe(src, steps=2, conditions={"dose": 5})
    blind = pipe(src, steps=2)
    assert given.info["conditions"] == {"dose": 20} and blind.info["conditions"] == "blind"
    assert not np.allclose(given["output"].array, other["output"].array)  # the dose reaches the network
    assert not np.allclose(given["output"].array, blind["output"].array)
    windows = pipe(src, steps=2, conditions={"dose": 20}, sw_roi=8)  # constant channels survive windowing
    assert windows["output"].shape == given["output"].shape
    out = tmp_path / "o.nii.gz"
    code, _, err = run_main(["translate", "-m", tmp_path / "run" / "last.pt", "-i", src, "-o", out, "--steps", "1",
                             "--condition", "dose=-1"], capsys)
    assert code == 2 and "must be positive" in err and not out.exists()
    code, _, err = run_main(["translate", "-m", tmp_path / "run" / "last.pt", "-i", src, "-o", out, "--steps", "1",
                             "--condition", "counts=3"], capsys)
    assert code == 2 and "takes the condition(s) dose, not counts" in err and not out.exists()
    code, _, err = run_main(["translate", "-m", tmp_path / "run" / "last.pt", "-i", src, "-o", out, "--steps", "1",
                             "--condition", "dose=5"], capsys)
    assert code == 0, err
    assert load_volume(out).shape == (16, 16, 16)


def test_conditions_config_is_checked_before_training(tmp_path):
    from voxdiff.train.trainer import Trainer

    manifest = _two_dose_manifest(tmp_path)
    cfg = _dose_config(tmp_path, manifest, dropout=0.0)
    del cfg["data"]["conditions"]
    with pytest.raises(VoxdiffError, match="model.conditions names dose, but data.conditions gives no value"):
        Trainer(cfg, quiet=True)
    cfg = _dose_config(tmp_path, manifest)
    cfg["data"]["conditions"] = {"dose": {"source": 20}}  # no value for the 'noisier' column
    with pytest.raises(VoxdiffError, match="exactly one of the columns"):
        Trainer(cfg, quiet=True)
    cfg = _dose_config(tmp_path, manifest)
    cfg["data"]["conditions"]["counts"] = "counts"
    with pytest.raises(VoxdiffError, match="data.conditions.counts is not a condition of the model"):
        Trainer(cfg, quiet=True)
    cfg = _dose_config(tmp_path, manifest)
    cfg["data"]["conditions"] = {"dose": "dose_column"}  # a manifest column that is not there
    with pytest.raises(VoxdiffError, match="names the manifest column 'dose_column'"):
        Trainer(cfg, quiet=True)


def test_a_dose_column_of_the_manifest_can_feed_the_condition(tmp_path):
    from voxdiff.train.trainer import Trainer

    manifest = make_pairs(tmp_path, n=4)
    lines = manifest.read_text().splitlines()
    manifest.write_text("\n".join([lines[0] + ",dose"] + [f"{l},{5 * (i + 1)}" for i, l in enumerate(lines[1:])]) + "\n")
    cfg = tiny_config(tmp_path, manifest, steps=1, val_every=0)
    cfg["data"]["conditions"] = {"dose": "dose"}
    cfg["model"]["conditions"] = {"dose": "linear"}
    tr = Trainer(cfg, quiet=True)
    assert {c.id: c.meta["dose"] for c in tr.train_set.cases} == {
        f"c{i}": str(5 * (i + 1)) for i in range(4) if f"c{i}" in {c.id for c in tr.train_set.cases}}
    tr.fit()
