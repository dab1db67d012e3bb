"""``extends:`` in config files: a variant states only what it changes; bad chains are one clear error."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.helpers import assert_user_error, run_main
from voxdiff.errors import VoxdiffError
from voxdiff.train.config import load_config

BASE = {
    "task": "translation",
    "data": {"manifest": "data/manifest.csv", "roles": {"source": "low", "target": "full"}, "crop_size": 16},
    "model": {"backbone": {"kind": "unet", "base_channels": 16, "channel_mults": [1, 2]}, "puzzle_factor": 2},
    "train": {"steps": 100, "lr": 3.0e-4},
}


def _write(path: Path, cfg: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_variant_merges_over_its_base_and_keeps_base_paths(tmp_path):
    base = _write(tmp_path / "base" / "base.yaml", BASE)
    variant = _write(tmp_path / "variants" / "v.yaml", {
        "extends": "../base/base.yaml",
        "data": {"roles": {"target": "comp"}},
        "model": {"backbone": {"base_channels": 32}, "anchor_sigma": 1.0},
        "train": {"lr": 1.0e-4},
    })
    cfg = load_config(variant)
    assert "extends" not in cfg
    assert cfg["data"]["roles"] == {"source": "low", "target": "comp"}
    assert cfg["data"]["crop_size"] == 16
    # The base's relative manifest is resolved against the base's folder, not the variant's.
    assert Path(cfg["data"]["manifest"]) == (base.parent / "data" / "manifest.csv").resolve()
    assert cfg["model"]["backbone"]["base_channels"] == 32
    assert cfg["model"]["backbone"]["channel_mults"] == [1, 2]
    assert cfg["model"]["anchor_sigma"] == 1.0
    assert cfg["train"]["lr"] == 1.0e-4 and cfg["train"]["steps"] == 100
    # Overrides still win over both files.
    assert load_config(variant, ["train.lr=5e-5"])["train"]["lr"] == 5e-5


def test_chain_of_three_and_a_kind_change_replaces_the_section(tmp_path):
    _write(tmp_path / "a.yaml", BASE)
    _write(tmp_path / "b.yaml", {"extends": "a.yaml", "train": {"steps": 50}})
    c = _write(tmp_path / "c.yaml", {"extends": "b.yaml",
                                      "model": {"backbone": {"kind": "monai", "channels": [8, 16]}}})
    cfg = load_config(c)
    assert cfg["train"]["steps"] == 50 and cfg["train"]["lr"] == 3.0e-4
    assert cfg["model"]["backbone"]["kind"] == "monai"
    assert "base_channels" not in cfg["model"]["backbone"]  # one kind's keys never leak into another's


def test_variant_own_manifest_is_resolved_against_its_folder(tmp_path):
    _write(tmp_path / "base.yaml", BASE)
    v = _write(tmp_path / "sub" / "v.yaml", {"extends": "../base.yaml", "data": {"manifest": "m.csv"}})
    assert Path(load_config(v)["data"]["manifest"]) == (tmp_path / "sub" / "m.csv").resolve()


@pytest.mark.parametrize("case", ["missing", "cycle", "self", "not_a_string"])
def test_bad_extends_is_one_error_naming_the_file(tmp_path, case):
    if case == "missing":
        v = _write(tmp_path / "v.yaml", {"extends": "nowhere.yaml"})
        words = ["v.yaml", "nowhere.yaml", "not found"]
    elif case == "cycle":
        _write(tmp_path / "a.yaml", {"extends": "b.yaml"})
        v = _write(tmp_path / "b.yaml", {"extends": "a.yaml"})
        words = ["cycle", "a.yaml", "b.yaml"]
    elif case == "self":
        v = _write(tmp_path / "v.yaml", {"extends": "v.yaml"})
        words = ["cycle", "v.yaml"]
    else:
        v = _write(tmp_path / "v.yaml", {"extends": ["a.yaml"]})
        words = ["v.yaml", "'extends' must name"]
    with pytest.raises(VoxdiffError) as exc:
        load_config(v)
    for w in words:
        assert w in str(exc.value), (w, str(exc.value))


def test_train_with_a_missing_base_exits_2_and_writes_nothing(tmp_path, capsys):
    v = _write(tmp_path / "v.yaml", {"extends": "gone.yaml", "train": {"steps": 1}})
    out_dir = tmp_path / "run"
    code, out, err = run_main(["train", v, "-o", out_dir], capsys)
    assert_user_error(code, out, err, "gone.yaml")
    assert not out_dir.exists()


def test_shipped_variant_configs_equal_their_former_full_copies():
    """The configs rewritten as ``extends`` variants resolve to what they held as full copies."""
    root = Path(__file__).resolve().parents[2] / "configs"
    anchor = load_config(root / "pet_proj_ppdm_r2_anchor.yaml")
    comp_ft = load_config(root / "pet_proj_ppdm_r2_comp_ft.yaml")
    # What the anchor recipe changes against the fine-tune it extends, and nothing else.
    assert anchor["model"]["anchor_sigma"] == 1.27 and "anchor_sigma" not in comp_ft["model"]
    assert anchor["train"]["init_from"] is None and comp_ft["train"]["init_from"]
    assert anchor["train"]["lr"] == 1.0e-4 and anchor["train"]["warmup_steps"] == 200
    for section in ("data", "inference"):
        assert anchor[section] == comp_ft[section], section
    same = {k: v for k, v in anchor["model"].items() if k != "anchor_sigma"}
    assert same == comp_ft["model"]


def test_print_config_shows_the_merged_config_and_writes_nothing(tmp_path, capsys):
    _write(tmp_path / "base.yaml", BASE)
    v = _write(tmp_path / "v.yaml", {"extends": "base.yaml", "train": {"lr": 1.0e-4}})
    out_dir = tmp_path / "run"
    code, out, err = run_main(["train", v, "--set", "train.steps=7", "-o", out_dir, "--print-config"], capsys)
    assert code == 0, err
    shown = yaml.safe_load(out)
    assert shown == load_config(v, ["train.steps=7", f"train.out_dir={out_dir}"])
    assert shown["train"]["lr"] == 1.0e-4 and shown["train"]["steps"] == 7 and "extends" not in shown
    assert not out_dir.exists()
