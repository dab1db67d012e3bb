"""Bad-input corpus: every command refuses broken input with one clear line, exit 2, no output file."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tests.test_cli_basic import assert_user_error, run_main
from tests.test_train import make_pairs, tiny_config
from voxdiff.io import save_volume
from voxdiff.train.trainer import Trainer

AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])


@pytest.fixture(autouse=True)
def _wide_console(monkeypatch):
    monkeypatch.setenv("COLUMNS", "300")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, Path]:
    """Broken volumes, each named after what is wrong with it, plus a good one."""
    d = tmp_path_factory.mktemp("corpus")
    rng = np.random.default_rng(0)
    good = (rng.random((16, 16, 16)) * 100).astype(np.float32)
    files = {"good": save_volume(good, d / "good.nii.gz", affine=AFFINE)}
    raw = files["good"].read_bytes()
    (d / "truncated.nii.gz").write_bytes(raw[: len(raw) // 2])
    (d / "text.nii.gz").write_text("this is not a volume\n")
    (d / "garbage.nii.gz").write_bytes(gzip.compress(b"\x00" * 100))
    nib.save(nib.Nifti1Image(np.zeros((16, 16), np.float32), np.eye(4)), str(d / "flat2d.nii.gz"))
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8, 3), np.float32), np.eye(4)), str(d / "four_d.nii.gz"))
    nan = good.copy()
    nan[3, 3, 3] = np.nan
    nib.save(nib.Nifti1Image(nan, AFFINE), str(d / "nan.nii.gz"))
    inf = good.copy()
    inf[1, 2, 3] = np.inf
    nib.save(nib.Nifti1Image(inf, AFFINE), str(d / "inf.nii.gz"))
    files["constant"] = save_volume(np.full((16, 16, 16), 7.0, np.float32), d / "constant.nii.gz", affine=AFFINE)
    files["empty_labels"] = save_volume(np.zeros((16, 16, 16), np.uint8), d / "empty_labels.nii.gz", affine=AFFINE, dtype=np.uint8)
    files["smaller"] = save_volume(good[:12], d / "smaller.nii.gz", affine=AFFINE)
    (d / "volume.xyz").write_text("unknown format")
    for name in ("truncated", "text", "garbage", "flat2d", "four_d", "nan", "inf"):
        files[name] = d / f"{name}.nii.gz"
    files["unknown_ext"] = d / "volume.xyz"
    files["missing"] = d / "does_not_exist.nii.gz"
    return files


BROKEN_VOLUMES = ["missing", "unknown_ext", "truncated", "text", "garbage", "flat2d", "four_d", "nan", "inf"]


@pytest.fixture(scope="module")
def translation_model(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("model")
    manifest = make_pairs(d)
    cfg = tiny_config(d, manifest)
    cfg["data"]["normalization"] = {"source": {"mode": "percentile", "lower": 0, "upper": 99.5},
                                    "target": {"mode": "same_as", "role": "source"}}
    cfg["train"]["steps"] = 1
    cfg["train"]["val_every"] = 0
    Trainer(cfg, quiet=True).fit()
    return d / "run" / "last.pt"


def _no_output(*paths: Path) -> None:
    for p in paths:
        assert not p.exists(), f"{p} was written despite the error"
        leftovers = list(p.parent.glob(f".{p.name}*")) if p.parent.exists() else []
        assert not leftovers, leftovers


@pytest.mark.parametrize("bad", BROKEN_VOLUMES)
def test_info(bad, corpus, capsys):
    if bad in ("nan", "inf"):
        pytest.skip("info reports non-finite volumes instead of refusing them")
    assert_user_error(*run_main(["info", corpus[bad]], capsys), corpus[bad].name)


@pytest.mark.parametrize("bad", BROKEN_VOLUMES + ["smaller"])
def test_evaluate_prediction(bad, corpus, capsys, tmp_path):
    out = tmp_path / "m.csv"
    assert_user_error(*run_main(["evaluate", "--pred", corpus[bad], "--target", corpus["good"], "--out", out], capsys),
                      corpus[bad].name)
    _no_output(out)


def test_evaluate_constant_target_and_unwritable_output(corpus, capsys, tmp_path):
    assert_user_error(*run_main(["evaluate", "--pred", corpus["good"], "--target", corpus["constant"]], capsys))
    out = tmp_path / "no_such_folder" / "m.csv"
    assert_user_error(*run_main(["evaluate", "--pred", corpus["good"], "--target", corpus["good"], "--out", out],
                                capsys), "no_such_folder")


@pytest.mark.parametrize("bad", BROKEN_VOLUMES + ["empty_labels", "good"])
def test_simulate_pet(bad, corpus, capsys, tmp_path):
    # "good" holds non-integer values: not a label map.
    out = tmp_path / "pet"
    out.mkdir()
    assert_user_error(*run_main(["simulate-pet", corpus[bad], "--out-dir", out, "--head", "none"], capsys),
                      corpus[bad].name)
    assert not any(out.iterdir()), list(out.iterdir())


@pytest.mark.parametrize("bad", BROKEN_VOLUMES + ["constant"])
def test_translate_input(bad, corpus, capsys, tmp_path, translation_model):
    out = tmp_path / "out.nii.gz"
    code, so, se = run_main(["translate", "-m", translation_model, "-i", corpus[bad], "-o", out, "-k", "1"], capsys)
    assert_user_error(code, so, se, *(() if bad == "constant" else (corpus[bad].name,)))
    _no_output(out)


def test_translate_bad_model_and_output(corpus, capsys, tmp_path, translation_model):
    out = tmp_path / "out.nii.gz"
    assert_user_error(*run_main(["translate", "-m", corpus["text"], "-i", corpus["good"], "-o", out], capsys),
                      corpus["text"].name)
    assert_user_error(*run_main(["translate", "-m", tmp_path / "none.pt", "-i", corpus["good"], "-o", out], capsys),
                      "none.pt")
    _no_output(out)
    bad_out = tmp_path / "missing_dir" / "out.nii.gz"
    assert_user_error(*run_main(["translate", "-m", translation_model, "-i", corpus["good"], "-o", bad_out], capsys),
                      "missing_dir")
    assert_user_error(*run_main(["translate", "-m", translation_model, "-i", corpus["good"], "-o", out,
                                 "--uncertainty", tmp_path / "u.nii.gz"], capsys), "--samples")
    _no_output(out, tmp_path / "u.nii.gz")
    # A checkpoint of another task is refused by the sample command.
    assert_user_error(*run_main(["sample", "-m", translation_model, "-o", tmp_path / "s.nii.gz"], capsys), "task")
    _no_output(tmp_path / "s.nii.gz")


def test_train_bad_configs_and_manifests(corpus, capsys, tmp_path):
    assert_user_error(*run_main(["train", tmp_path / "missing.yaml"], capsys), "missing.yaml")
    (tmp_path / "list.yaml").write_text("- just\n- a list\n")
    assert_user_error(*run_main(["train", tmp_path / "list.yaml"], capsys), "list.yaml")
    (tmp_path / "broken.yaml").write_text("task: [unclosed\n")
    assert_user_error(*run_main(["train", tmp_path / "broken.yaml"], capsys), "broken.yaml")

    def config(manifest_text: str) -> Path:
        (tmp_path / "m.csv").write_text(manifest_text)
        cfg = tmp_path / "c.yaml"
        cfg.write_text(f"task: translation\ndata: {{manifest: {tmp_path / 'm.csv'}, crop_size: 8}}\n"
                       f"train: {{steps: 1, out_dir: {tmp_path / 'run'}}}\n")
        return cfg

    good, smaller = corpus["good"], corpus["smaller"]
    assert_user_error(*run_main(["train", config(f"case,image\na,{good}\n")], capsys), "m.csv")
    assert_user_error(*run_main(["train", config("case,source,target\n")], capsys), "m.csv")
    assert_user_error(*run_main(["train", config(f"case,source,target\na,{good},{corpus['missing']}\n")], capsys),
                      corpus["missing"].name)
    assert_user_error(*run_main(["train", config(f"case,source,target\na,{good},{smaller}\nb,{good},{good}\n")],
                                capsys), smaller.name)
    assert_user_error(*run_main(["train", config(f"case,source,target\na,{good},{good}\n"), "--set", "train.steps=0"],
                                capsys), "train.steps")
    _no_output(tmp_path / "run" / "last.pt")
