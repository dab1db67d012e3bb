"""Datasets: manifests, folder scans, splits, case loading, normalisation, deterministic crops."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from voxdiff.data import (
    Case,
    VolumeDataset,
    case_normalizers,
    fit_dataset_normalizers,
    load_case,
    load_manifest,
    normalizers_from_dict,
    normalizers_to_dict,
    resolve_normalization,
    scan_folder,
    split_cases,
    write_manifest,
)
from voxdiff.errors import VoxdiffError
from voxdiff.io import save_volume

AFF = np.diag([2.0, 2.0, 2.0, 1.0])


def _write(path: Path, array: np.ndarray, affine: np.ndarray = AFF, dtype=np.float32) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_volume(np.asarray(array), path, affine=affine, dtype=dtype)


def _pair_case(root: Path, cid: str, shape=(12, 10, 8), seed: int = 0) -> Case:
    rng = np.random.default_rng(seed)
    img = rng.uniform(0, 100, shape).astype(np.float32)
    lab = np.zeros(shape, np.uint8)
    lab[2:5, 2:5, 2:5] = 1
    lab[6:8, 5:7, 3:6] = 2
    return Case(cid, {"source": _write(root / "source" / f"{cid}.nii.gz", img),
                      "target": _write(root / "target" / f"{cid}.nii.gz", 2 * img + 10),
                      "label": _write(root / "label" / f"{cid}.nii.gz", lab, dtype=np.uint8)})


@pytest.fixture
def pairs(tmp_path: Path) -> list[Case]:
    return [_pair_case(tmp_path / "data", f"c{i}", seed=i) for i in range(3)]


# ----------------------------------------------------------------------- manifests
def test_csv_manifest_relative_paths(tmp_path, pairs):
    man = tmp_path / "data" / "manifest.csv"
    man.write_text("case,source,target\n" + "".join(f"{c.id},source/{c.id}.nii.gz,target/{c.id}.nii.gz\n" for c in pairs))
    cases = load_manifest(man)
    assert [c.id for c in cases] == ["c0", "c1", "c2"]
    assert cases[1].paths["source"] == pairs[1].paths["source"]
    assert set(cases[0].paths) == {"source", "target"}
    only = load_manifest(man, roles=["target"])
    assert list(only[0].paths) == ["target"] and only[0].meta["source"] == "source/c0.nii.gz"


def test_json_manifest_list_and_object(tmp_path, pairs):
    rows = [{"id": c.id, "image": f"data/source/{c.id}.nii.gz", "label": f"data/label/{c.id}.nii.gz"} for c in pairs]
    (tmp_path / "a.json").write_text(json.dumps(rows))
    (tmp_path / "b.json").write_text(json.dumps({"cases": rows}))
    for name in ("a.json", "b.json"):
        cases = load_manifest(tmp_path / name, roles=["image", "label"])
        assert [c.id for c in cases] == ["c0", "c1", "c2"]
        assert cases[2].paths["label"] == pairs[2].paths["label"]


@pytest.mark.parametrize("content, match", [
    ("name,source\nc0,source/c0.nii.gz\n", "'case' \\(or 'id'\\) column"),
    ("case,source\n", "no case"),
    ("case,source\nc0,source/c0.nii.gz\nc0,source/c1.nii.gz\n", "duplicate case id 'c0'"),
    ("case,source\nc0,source/nope.nii.gz\n", "case 'c0', role 'source': file .*nope.nii.gz does not exist"),
    ("case,source\nc0,\n", "case 'c0' has no path for role 'source'"),
])
def test_manifest_errors(tmp_path, pairs, content, match):
    man = tmp_path / "data" / "m.csv"
    man.write_text(content)
    with pytest.raises(VoxdiffError, match=match):
        load_manifest(man)


def test_manifest_missing_file_and_roles(tmp_path, pairs):
    with pytest.raises(VoxdiffError, match="manifest not found"):
        load_manifest(tmp_path / "none.csv")
    man = tmp_path / "data" / "m.csv"
    man.write_text("case,source\nc0,source/c0.nii.gz\n")
    with pytest.raises(VoxdiffError, match="no column for role\\(s\\) target"):
        load_manifest(man, roles=["source", "target"])


def test_scan_folder_and_write_manifest_round_trip(tmp_path, pairs):
    cases = scan_folder(tmp_path / "data", ["source", "target", "label"])
    assert [c.id for c in cases] == ["c0", "c1", "c2"]
    out = tmp_path / "elsewhere" / "manifest.csv"
    out.parent.mkdir()
    write_manifest(cases, out)
    text = out.read_text()
    assert text.startswith("case,source,target,label\n") and "../data/source/c0.nii.gz" in text
    back = load_manifest(out)
    assert [(c.id, c.paths) for c in back] == [(c.id, c.paths) for c in cases]


def test_scan_folder_errors(tmp_path, pairs):
    with pytest.raises(VoxdiffError, match="missing role folder 'image/'"):
        scan_folder(tmp_path / "data", ["source", "image"])
    pairs[1].paths["target"].unlink()
    with pytest.raises(VoxdiffError, match="case 'c1' has no file in target/"):
        scan_folder(tmp_path / "data", ["source", "target"])


# --------------------------------------------------------------------------- splits
def test_split_deterministic_disjoint_and_order_free():
    cases = [Case(f"s{i:02d}", {}) for i in range(20)]
    a = split_cases(cases, val_fraction=0.2, test_fraction=0.1, seed=3)
    b = split_cases(list(reversed(cases)), val_fraction=0.2, test_fraction=0.1, seed=3)
    ids = {k: [c.id for c in v] for k, v in a.items()}
    assert ids == {k: [c.id for c in v] for k, v in b.items()}
    assert (len(ids["train"]), len(ids["val"]), len(ids["test"])) == (14, 4, 2)
    assert set(ids["train"]) | set(ids["val"]) | set(ids["test"]) == {c.id for c in cases}
    assert not (set(ids["train"]) & set(ids["val"])) and not (set(ids["val"]) & set(ids["test"]))
    other = split_cases(cases, val_fraction=0.2, test_fraction=0.1, seed=4)
    assert [c.id for c in other["val"]] != ids["val"]


def test_split_explicit_and_errors():
    cases = [Case(f"s{i}", {}) for i in range(5)]
    out = split_cases(cases, splits={"val": ["s1"], "test": ["s3", "s4"]})
    assert [c.id for c in out["train"]] == ["s0", "s2"] and [c.id for c in out["test"]] == ["s3", "s4"]
    with pytest.raises(VoxdiffError, match="not in the case list"):
        split_cases(cases, splits={"val": ["x"]})
    with pytest.raises(VoxdiffError, match="both split"):
        split_cases(cases, splits={"val": ["s1"], "test": ["s1"]})
    with pytest.raises(VoxdiffError, match="too few"):
        split_cases(cases[:2], val_fraction=0.5, test_fraction=0.5)
    assert len(split_cases(cases[:2], val_fraction=0.1)["val"]) == 1


# ------------------------------------------------------------------------ load_case
def test_load_case_checks(tmp_path, pairs):
    vols = load_case(pairs[0], ["source", "target", "label"])
    assert set(vols) == {"source", "target", "label"} and vols["label"].array.max() == 2
    shifted = AFF.copy()
    shifted[0, 3] = 5.0
    bad = Case("g", {"source": pairs[0].paths["source"],
                     "target": _write(tmp_path / "shift.nii.gz", np.zeros((12, 10, 8)), shifted)})
    with pytest.raises(VoxdiffError, match="case 'g'.*different affines"):
        load_case(bad, ["source", "target"])
    frac = Case("f", {"image": pairs[0].paths["source"], "label": pairs[0].paths["source"]})
    with pytest.raises(VoxdiffError, match="case 'f', label.*integer values"):
        load_case(frac, ["image", "label"])
    empty = Case("e", {"image": pairs[0].paths["source"],
                       "label": _write(tmp_path / "empty.nii.gz", np.zeros((12, 10, 8)), dtype=np.uint8)})
    load_case(empty, ["image", "label"])
    with pytest.raises(VoxdiffError, match="label map is empty"):
        load_case(empty, ["image", "label"], require_nonempty_labels=True)


# -------------------------------------------------------------------- normalisation
def test_case_normalizers_same_as_and_inverse(pairs):
    vols = load_case(pairs[0], ["source", "target", "label"])
    spec = {"source": {"mode": "percentile", "lower": 1, "upper": 99}, "target": {"mode": "same_as", "role": "source"}}
    norms = case_normalizers(vols, spec)
    assert norms["label"] is None and norms["target"] is norms["source"]
    lo, hi = np.percentile(vols["source"].array, [1, 99])
    assert norms["source"].lo == pytest.approx(lo) and norms["source"].hi == pytest.approx(hi)
    # Inference: only the source is known, yet the target's scaler is available.
    only = case_normalizers({"source": vols["source"]}, {**spec})
    assert only["source"].to_dict() == norms["source"].to_dict()
    x = vols["source"].array
    inside = (x > lo) & (x < hi)
    np.testing.assert_allclose(norms["source"].inverse(norms["source"].forward(x))[inside], x[inside], rtol=1e-5)
    assert normalizers_from_dict(normalizers_to_dict(norms))["source"].to_dict() == norms["source"].to_dict()
    z = case_normalizers(vols, {"source": {"mode": "zscore"}, "target": {"mode": "window", "center": 50, "width": 100}})
    assert z["source"].mean == pytest.approx(float(x.mean()), rel=1e-5) and z["target"].lo == 0 and z["target"].hi == 100


def test_normalization_spec_errors():
    roles = ["source", "target", "label"]
    with pytest.raises(VoxdiffError, match="unknown mode 'magic'"):
        resolve_normalization({"source": {"mode": "magic"}}, roles)
    with pytest.raises(VoxdiffError, match="label role 'label' must be 'none'"):
        resolve_normalization({"label": {"mode": "percentile"}}, roles)
    with pytest.raises(VoxdiffError, match="same_as loop"):
        resolve_normalization({"source": {"mode": "same_as", "role": "target"},
                               "target": {"mode": "same_as", "role": "source"}}, roles)
    with pytest.raises(VoxdiffError, match="not among the roles"):
        resolve_normalization({"mri": {"mode": "zscore"}}, roles)
    assert resolve_normalization(None, roles)["label"]["mode"] == "none"


def test_dataset_normalizers(pairs):
    spec = {"source": {"mode": "percentile", "lower": 0, "upper": 100, "per": "dataset"}}
    fitted = fit_dataset_normalizers(pairs, spec)
    arrays = [load_case(c, ["source"])["source"].array for c in pairs]
    assert fitted["source"]["lo"] == pytest.approx(min(a.min() for a in arrays))
    assert fitted["source"]["hi"] == pytest.approx(max(a.max() for a in arrays))
    vols = load_case(pairs[0], ["source"])
    assert case_normalizers(vols, spec, dataset_normalizers=fitted)["source"].to_dict() == fitted["source"]
    with pytest.raises(VoxdiffError, match="per dataset but no fitted"):
        case_normalizers(vols, spec)


# -------------------------------------------------------------------------- dataset
SPEC = {"source": {"mode": "percentile", "lower": 0, "upper": 100, "clip": False}, "target": {"mode": "same_as", "role": "source"}}


def test_crops_deterministic_per_seed_epoch_index(pairs):
    def crops(seed, epoch, n=2):
        ds = VolumeDataset(pairs, ["source", "target"], SPEC, crop_size=4, seed=seed, samples_per_volume=2)
        ds.set_epoch(epoch)
        return [ds[i] for i in range(n)]

    a, b = crops(0, 1), crops(0, 1)  # a fresh dataset (resumed run) gives the same crops
    for x, y in zip(a, b):
        assert torch.equal(x["source"], y["source"]) and torch.equal(x["location"], y["location"])
    assert a[0]["source"].shape == (1, 4, 4, 4) and a[0]["source"].dtype == torch.float32
    locs = {tuple(c[0]["location"].tolist()) for c in (crops(0, e, 1) for e in range(6))}
    assert len(locs) > 1
    assert any(not torch.equal(crops(0, 0, 1)[0]["location"], crops(s, 0, 1)[0]["location"]) for s in (1, 2, 3))
    # Source and target come from the same place and the same scaler: target = 2 * source + 10 in units.
    ds = VolumeDataset(pairs, ["source", "target"], SPEC, crop_size=4)
    item = ds[0]
    norm = ds.normalizers("c0")["source"]
    np.testing.assert_allclose(norm.inverse(item["target"].numpy()),
                               2 * norm.inverse(item["source"].numpy()) + 10, rtol=1e-4, atol=1e-3)
    assert len(VolumeDataset(pairs, ["source"], crop_size=4, samples_per_volume=3)) == 9


def test_small_volume_padded_with_background(tmp_path):
    case = Case("s", {"image": _write(tmp_path / "i.nii.gz", np.arange(6 * 7 * 5, dtype=np.float32).reshape(6, 7, 5)),
                      "label": _write(tmp_path / "l.nii.gz", np.ones((6, 7, 5)), dtype=np.uint8)})
    ds = VolumeDataset([case], ["image", "label"], {"image": {"mode": "percentile", "lower": 0, "upper": 100}},
                       crop_size=8, label_dtype=torch.long)
    item = ds[0]
    img, lab = item["image"][0], item["label"][0]
    assert img.shape == (8, 8, 8) and lab.dtype == torch.long
    assert torch.all(item["location"] <= 0)
    inside = lab == 1
    assert int(inside.sum()) == 6 * 7 * 5
    assert torch.all(img[~inside] == -1.0) and torch.all(lab[~inside] == 0)
    assert float(img[inside].min()) == -1.0 and float(img[inside].max()) == pytest.approx(1.0)


def test_whole_volume_pad_multiple_and_unpad(pairs):
    ds = VolumeDataset(pairs, ["source", "label"], {"source": SPEC["source"]},
                       crop_size=None, pad_multiple=8)
    item = ds[0]
    assert item["source"].shape == (1, 16, 16, 8)
    start = (-item["location"]).tolist()
    x, y, z = item["shape"].tolist()
    back = item["source"][0, start[0]:start[0] + x, start[1]:start[1] + y, start[2]:start[2] + z]
    vol = load_case(pairs[0], ["source"])["source"].array
    np.testing.assert_allclose(ds.normalizers(0)["source"].inverse(back.numpy()), vol, rtol=1e-5, atol=1e-3)
    item["source"].fill_(7.0)  # the cache must not be shared with callers
    assert not torch.all(ds[0]["source"] == 7.0)


def test_foreground_crops(pairs):
    ds = VolumeDataset(pairs, ["source", "label"], {"source": SPEC["source"]}, crop_size=3,
                       foreground_role="label", foreground_fraction=1.0, seed=1)
    for e in range(5):
        ds.set_epoch(e)
        assert all(ds[i]["label"].sum() > 0 for i in range(len(ds)))
    with pytest.raises(VoxdiffError, match="foreground_role"):
        VolumeDataset(pairs, ["source"], crop_size=3, foreground_fraction=0.5)


def test_dataloader_collates(pairs):
    ds = VolumeDataset(pairs, ["source", "label"], {"source": SPEC["source"]}, crop_size=4)
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=2)))
    assert batch["source"].shape == (2, 1, 4, 4, 4) and batch["case"] == ["c0", "c1"]
    assert batch["location"].shape == (2, 3)


def test_dataset_errors(pairs):
    with pytest.raises(VoxdiffError, match="case 'c0' has no 'image' volume"):
        VolumeDataset(pairs, ["image"])
    with pytest.raises(VoxdiffError, match="crop_size"):
        VolumeDataset(pairs, ["source"], crop_size=(4, 4))
    ds = VolumeDataset([pairs[0]], ["source", "label"], {"source": {"mode": "range", "lo": 0, "hi": 100}})
    item = ds[0]
    assert item["source"].shape == (1, 12, 10, 8) and -1.0 <= float(item["source"].min()) < float(item["source"].max()) <= 1.0
