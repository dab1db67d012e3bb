"""Bad-input corpus: every command refuses broken input with one clear line, exit 2, no output file.

Covers info, evaluate, simulate-pet, simulate-pet-dataset, train, translate, sample, segment,
make-labels, demo, export and bench memory/sampling, then a full disk: ENOSPC injected into the
writes of one output folder (in-process) and a real EFBIG from RLIMIT_FSIZE (subprocess). No case
runs a model to completion except where a full disk must hit the final write.
"""

from __future__ import annotations

import builtins
import errno
import gzip
import io
import json
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from tests.test_cli_basic import assert_user_error, run_main
from tests.test_segmentation import _fake_tables, _make_cases
from tests.test_train import make_pairs, tiny_config
from voxdiff.errors import VoxdiffError
from voxdiff.io import save_volume
from voxdiff.train.config import load_config
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


def _listing(folder: Path) -> list[str]:
    """Every entry under ``folder`` (hidden temporary files and folders included)."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


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
    line = assert_user_error(*run_main(["translate", "-m", translation_model, "-i", corpus[bad], "-o", out, "-k", "1"],
                                       capsys), corpus[bad].name)
    if bad == "constant":
        assert "constant" in line, line
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


# ----------------------------------------------------------------------------- models and checkpoints
def _train_seg(root: Path, manifest: Path, task: str, model: str) -> Path:
    cfg = load_config(None, [
        f"task={task}", f"data.manifest={manifest}", "data.crop_size=8", "data.val_fraction=0", "data.val_cases=0",
        f"model={model}", f"train.out_dir={root / task}", "train.steps=1", "train.batch_size=1", "train.val_every=0",
        "train.log_every=1", "inference.steps=2", "inference.start_step=20",
    ])
    Trainer(cfg, quiet=True).fit()
    return root / task / "last.pt"


@pytest.fixture(scope="module")
def seg_models(tmp_path_factory) -> dict[str, Path]:
    """One-step PD-DDPM (3 classes, T = 50) and preseg checkpoints."""
    root = tmp_path_factory.mktemp("seg")
    manifest = _make_cases(root, n=2)
    return {
        "seg": _train_seg(root, manifest, "segmentation",
                          "{num_classes: 3, process: {kind: ddpm, num_train_timesteps: 50}, backbone: {kind: unet, "
                          "base_channels: 4, channel_mults: [1, 2], num_res_blocks: 1, norm_groups: 2}}"),
        "preseg": _train_seg(root, manifest, "preseg", "{num_classes: 3, channels: [4, 8], num_res_units: 0}"),
    }


@pytest.fixture(scope="module")
def synthesis_model(tmp_path_factory) -> Path:
    """One-step unconditional DDPM (T = 50) on 8^3 volumes."""
    d = tmp_path_factory.mktemp("synthesis")
    rows = ["case,image"]
    for i in range(2):
        save_volume(np.random.default_rng(i).normal(100, 20, (8, 8, 8)).astype(np.float32), d / f"i{i}.nii.gz",
                    affine=AFFINE)
        rows.append(f"i{i},i{i}.nii.gz")
    (d / "m.csv").write_text("\n".join(rows) + "\n")
    cfg = load_config(None, [
        "task=synthesis", f"data.manifest={d / 'm.csv'}", "data.crop_size=8", "data.val_fraction=0",
        "data.normalization={image: {mode: percentile, lower: 1, upper: 99, per: dataset}}",
        "model.backbone={kind: unet, base_channels: 4, channel_mults: [1, 2], num_res_blocks: 1, norm_groups: 2}",
        "model.process={kind: ddpm, num_train_timesteps: 50}",
        f"train.out_dir={d / 'run'}", "train.steps=1", "train.val_every=0", "inference.steps=2",
    ])
    Trainer(cfg, quiet=True).fit()
    return d / "run" / "last.pt"


@pytest.fixture(scope="module")
def bad_checkpoints(tmp_path_factory, translation_model) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("bad_ckpts")
    (d / "notes.pt").write_text("not a checkpoint\n")
    torch.save({"weights": torch.zeros(2)}, d / "foreign.pt")
    raw = translation_model.read_bytes()
    (d / "truncated.pt").write_bytes(raw[: len(raw) // 2])
    (d / "empty_run").mkdir()
    return {"text": d / "notes.pt", "foreign": d / "foreign.pt", "truncated": d / "truncated.pt",
            "missing": d / "missing.pt", "empty_run": d / "empty_run"}


#: What each broken checkpoint's message says (beside its name).
BAD_CHECKPOINTS = {"text": "not a loadable", "foreign": "not a voxdiff checkpoint", "truncated": "not a loadable",
                   "missing": "not found", "empty_run": "no last.pt"}


def _models(translation_model, seg_models, synthesis_model) -> dict[str, Path]:
    return {"translation": translation_model, "synthesis": synthesis_model, **seg_models}


# ----------------------------------------------------------------------------- translate: model, steps
@pytest.mark.parametrize("bad", sorted(BAD_CHECKPOINTS))
def test_translate_bad_checkpoint(bad, bad_checkpoints, corpus, capsys, tmp_path):
    line = assert_user_error(*run_main(["translate", "-m", bad_checkpoints[bad], "-i", corpus["good"],
                                        "-o", tmp_path / "out.nii.gz"], capsys), bad_checkpoints[bad].name)
    assert BAD_CHECKPOINTS[bad] in line, line
    assert _listing(tmp_path) == []


@pytest.mark.parametrize("args,expect", [
    (["-k", "0"], "--steps must lie in 1..1000"), (["-k", "-1"], "--steps"), (["-k", "1001"], "got 1001"),
    (["--eta", "2"], "eta"), (["--model-of", "synthesis"], "task 'synthesis'"),
    (["--model-of", "seg"], "task 'segmentation'"),
], ids=["steps0", "steps-1", "steps>T", "eta", "synthesis_ckpt", "segmentation_ckpt"])
def test_translate_bad_options(args, expect, translation_model, seg_models, synthesis_model, corpus, capsys, tmp_path):
    model = translation_model
    if args[0] == "--model-of":
        model, args = _models(translation_model, seg_models, synthesis_model)[args[1]], []
    line = assert_user_error(*run_main(["translate", "-m", model, "-i", corpus["good"], "-o", tmp_path / "out.nii.gz",
                                        *args], capsys))
    assert expect in line, line
    assert _listing(tmp_path) == []


# ----------------------------------------------------------------------------- segment
@pytest.fixture(scope="module")
def presegs(tmp_path_factory) -> dict[str, Path]:
    """Pre-segmentations for the corpus's 16^3 grid: one good, the others broken as named."""
    d = tmp_path_factory.mktemp("preseg")
    lab = np.zeros((16, 16, 16), np.uint8)
    lab[4:12, 4:12, 4:12] = 1
    lab[6:10, 6:10, 6:10] = 2
    (d / "text.nii.gz").write_text("not labels\n")
    return {
        "ok": save_volume(lab, d / "ok.nii.gz", affine=AFFINE, dtype=np.uint8),
        "shape": save_volume(lab[:, :, :15], d / "shape.nii.gz", affine=AFFINE, dtype=np.uint8),
        "affine": save_volume(lab, d / "affine.nii.gz", affine=np.eye(4), dtype=np.uint8),
        "range": save_volume(np.where(lab == 2, 5, lab), d / "range.nii.gz", affine=AFFINE, dtype=np.uint8),
        "negative": save_volume(lab.astype(np.int16) - 1, d / "negative.nii.gz", affine=AFFINE, dtype=np.int16),
        "fractional": save_volume(lab + np.float32(0.5), d / "fractional.nii.gz", affine=AFFINE),
        "text": d / "text.nii.gz",
        "missing": d / "missing.nii.gz",
    }


BAD_PRESEGS = {"shape": "shape", "affine": "different affines", "range": "0..2", "negative": "0..2",
               "fractional": "integer", "text": "not a readable NIfTI", "missing": "not found"}


@pytest.mark.parametrize("bad", BROKEN_VOLUMES + ["constant"])
def test_segment_input(bad, corpus, seg_models, presegs, capsys, tmp_path):
    args = ["segment", "-m", seg_models["seg"], "-i", corpus[bad], "-o", tmp_path / "s.nii.gz", "--preseg",
            presegs["ok"], "-u", tmp_path / "u.nii.gz"]
    line = assert_user_error(*run_main(args, capsys), corpus[bad].name)
    if bad == "constant":
        assert "constant" in line, line
    assert _listing(tmp_path) == []


@pytest.mark.parametrize("bad", sorted(BAD_PRESEGS))
def test_segment_bad_preseg(bad, corpus, seg_models, presegs, capsys, tmp_path):
    args = ["segment", "-m", seg_models["seg"], "-i", corpus["good"], "-o", tmp_path / "s.nii.gz", "--preseg",
            presegs[bad], "--probs", tmp_path / "p.nii.gz"]
    line = assert_user_error(*run_main(args, capsys), presegs[bad].name)
    assert BAD_PRESEGS[bad] in line, line
    assert _listing(tmp_path) == []


@pytest.mark.parametrize("bad", sorted(BAD_CHECKPOINTS) + ["translation", "synthesis"])
def test_segment_bad_model(bad, bad_checkpoints, translation_model, seg_models, synthesis_model, corpus, presegs,
                           capsys, tmp_path):
    model = bad_checkpoints.get(bad) or _models(translation_model, seg_models, synthesis_model)[bad]
    line = assert_user_error(*run_main(["segment", "-m", model, "-i", corpus["good"], "-o", tmp_path / "s.nii.gz",
                                        "--preseg", presegs["ok"]], capsys), model.name)
    assert BAD_CHECKPOINTS.get(bad, f"task '{bad}'") in line, line
    assert _listing(tmp_path) == []


#: (model, options, words of the message); {name} is a pre-segmentation, a model or the output folder.
SEGMENT_OPTION_CASES = {
    "start_step>=T": ("seg", ["--preseg", "{ok}", "-t", "50"], ["--start-step", "0..49", "50"]),
    "start_step<0": ("seg", ["--preseg", "{ok}", "-t", "-1"], ["--start-step", "-1"]),
    "steps>t'+1": ("seg", ["--preseg", "{ok}", "-t", "10", "-k", "12"], ["--steps", "1..11"]),
    "steps0": ("seg", ["--preseg", "{ok}", "-k", "0"], ["--steps", "got 0"]),
    "vanilla_steps0": ("seg", ["--mode", "vanilla", "-k", "0"], ["--steps", "1..50"]),
    "vanilla_steps>T": ("seg", ["--mode", "vanilla", "-k", "51"], ["--steps", "1..50"]),
    "vanilla_start_step": ("seg", ["--mode", "vanilla", "-t", "10"], ["--start-step", "--mode pd"]),
    "vanilla_preseg": ("seg", ["--mode", "vanilla", "--preseg", "{ok}"], ["--mode vanilla", "--preseg"]),
    "vanilla_preseg_model": ("seg", ["--mode", "vanilla", "--preseg-model", "{preseg}"], ["--mode vanilla"]),
    "unknown_mode": ("seg", ["--mode", "bogus", "--preseg", "{ok}"], ["--mode", "bogus"]),
    "no_preseg": ("seg", [], ["pre-segmentation", "--preseg"]),
    "preseg_and_model": ("seg", ["--preseg", "{ok}", "--preseg-model", "{preseg}"], ["--preseg", "--preseg-model"]),
    "unknown_uncertainty": ("seg", ["--preseg", "{ok}", "--uncertainty-kind", "bogus"], ["--uncertainty-kind"]),
    "variance_one_sample": ("seg", ["--preseg", "{ok}", "-u", "{out}/u.nii.gz", "--uncertainty-kind", "variance"],
                            ["--samples 2"]),
    "eta": ("seg", ["--preseg", "{ok}", "--eta", "-1"], ["eta", "-1"]),
    "probs_not_nifti": ("seg", ["--preseg", "{ok}", "--probs", "{out}/p.mha"], ["--probs", "p.mha"]),
    "preseg_model_is_seg": ("seg", ["--preseg-model", "{seg}"], ["task 'segmentation'", "preseg"]),
    "preseg_model_is_translation": ("seg", ["--preseg-model", "{translation}"], ["task 'translation'"]),
    "preseg_model_bad": ("seg", ["--preseg-model", "{text}"], ["notes.pt", "not a loadable"]),
    "preseg_with_preseg": ("preseg", ["--preseg", "{ok}"], ["preseg model"]),
    "preseg_with_steps": ("preseg", ["-k", "3"], ["--steps", "preseg model"]),
    "preseg_with_start_step": ("preseg", ["-t", "3"], ["--start-step", "preseg model"]),
    "preseg_vanilla": ("preseg", ["--mode", "vanilla"], ["--mode", "preseg model"]),
    "preseg_mi": ("preseg", ["-u", "{out}/u.nii.gz", "--uncertainty-kind", "mi"], ["entropy"]),
    "out_folder_missing": ("seg", ["--preseg", "{ok}", "-o", "{out}/missing_dir/s.nii.gz"], ["missing_dir"]),
    "uncertainty_folder_missing": ("seg", ["--preseg", "{ok}", "-u", "{out}/missing_dir/u.nii.gz"], ["missing_dir"]),
    "probs_folder_missing": ("seg", ["--preseg", "{ok}", "--probs", "{out}/missing_dir/p.nii.gz"], ["missing_dir"]),
    "out_parent_is_file": ("seg", ["--preseg", "{ok}", "-o", "{notes}/s.nii.gz"], ["notes.txt"]),
}


@pytest.mark.parametrize("case", list(SEGMENT_OPTION_CASES))
def test_segment_bad_options(case, corpus, translation_model, seg_models, synthesis_model, presegs, bad_checkpoints,
                             capsys, tmp_path):
    model, args, words = SEGMENT_OPTION_CASES[case]
    out = tmp_path / "out"
    out.mkdir()
    (tmp_path / "notes.txt").write_text("a file, not a folder\n")
    names = {**{k: str(v) for k, v in presegs.items()},
             **{k: str(v) for k, v in _models(translation_model, seg_models, synthesis_model).items()},
             "text": str(bad_checkpoints["text"]), "out": str(out), "notes": str(tmp_path / "notes.txt")}
    args = [a.format(**names) for a in args]
    if "-o" not in args:
        args += ["-o", str(out / "s.nii.gz")]
    line = assert_user_error(*run_main(["segment", "-m", names[model], "-i", corpus["good"], *args], capsys))
    for word in words:
        assert word in line, (word, line)
    assert _listing(out) == []


# ----------------------------------------------------------------------------- sample
@pytest.mark.parametrize("case", sorted(BAD_CHECKPOINTS) + ["translation", "seg", "steps0", "steps-1", "steps>T", "eta",
                                                            "missing_dir", "folder", "count_without_i"])
def test_sample(case, bad_checkpoints, translation_model, seg_models, synthesis_model, capsys, tmp_path):
    models = _models(translation_model, seg_models, synthesis_model)
    out = tmp_path / "s.nii.gz"
    model, args, words = synthesis_model, [], []
    if case in BAD_CHECKPOINTS:
        model, words = bad_checkpoints[case], [bad_checkpoints[case].name, BAD_CHECKPOINTS[case]]
    elif case in models:
        model, words = models[case], [models[case].name, "task '", "needs 'synthesis'"]
    else:
        args, words = {
            "steps0": (["-k", "0"], ["--steps", "1..50", "got 0"]),
            "steps-1": (["-k", "-1"], ["--steps", "got -1"]),
            "steps>T": (["-k", "51"], ["--steps", "got 51"]),
            "eta": (["--eta", "-1"], ["eta", "-1"]),
            "missing_dir": (["-o", tmp_path / "missing_dir" / "s.nii.gz"], ["missing_dir"]),
            "folder": (["-o", tmp_path], [str(tmp_path), "folder"]),
            "count_without_i": (["-n", "2"], ["{i}"]),
        }[case]
    line = assert_user_error(*run_main(["sample", "-m", model, "-o", out, *args], capsys))
    for word in words:
        assert word in line, (word, line)
    assert _listing(tmp_path) == []


# ----------------------------------------------------------------------------- export
@pytest.mark.parametrize("case", sorted(BAD_CHECKPOINTS) + ["not_pt", "missing_dir", "folder", "parent_is_file"])
def test_export(case, bad_checkpoints, translation_model, capsys, tmp_path):
    src, out, words = translation_model, tmp_path / "out" / "model.pt", []
    out.parent.mkdir()
    if case in BAD_CHECKPOINTS:
        src, words = bad_checkpoints[case], [bad_checkpoints[case].name, BAD_CHECKPOINTS[case]]
    elif case == "not_pt":
        out, words = out.with_suffix(".pth"), ["model.pth", ".pt"]
    elif case == "missing_dir":
        out, words = out.parent / "missing_dir" / "model.pt", ["missing_dir", "does not exist"]
    elif case == "folder":
        out.mkdir()
        words = ["model.pt", "is a folder"]
    else:
        (tmp_path / "out" / "notes.txt").write_text("a file\n")
        out, words = tmp_path / "out" / "notes.txt" / "model.pt", ["notes.txt", "not a folder"]
    line = assert_user_error(*run_main(["export", src, out], capsys))
    for word in words:
        assert word in line, (word, line)
    expected = {"folder": ["model.pt"], "parent_is_file": ["notes.txt"]}.get(case, [])
    assert _listing(tmp_path / "out") == expected


# ----------------------------------------------------------------------------- make-labels
@pytest.fixture(scope="module")
def parcellations(tmp_path_factory) -> Path:
    """Folders of parcellations (tables beside them): case 'a' good, case 'b' broken as the folder is named."""
    root = tmp_path_factory.mktemp("parc")
    _fake_tables(root)  # read from the parent of --labels-dir
    rng = np.random.default_rng(0)
    parc = np.array([0, 1, 4, 51, 52, 47, 48, 60, 81])[rng.integers(0, 9, (8, 8, 8))]
    for folder, cases in (("t1", "ab"), ("t1_only_a", "a")):
        (root / folder).mkdir()
        for cid in cases:
            save_volume(rng.random((8, 8, 8)).astype(np.float32), root / folder / f"{cid}.nii.gz", affine=AFFINE)
    (root / "empty").mkdir()
    seconds = {
        "good": lambda p: save_volume(parc, p, affine=AFFINE, dtype=np.uint8),
        "fractional": lambda p: save_volume(parc + 0.5, p, affine=AFFINE),
        "negative": lambda p: save_volume(parc - 100, p, affine=AFFINE, dtype=np.int16),
        "shape": lambda p: save_volume(parc[:7], p, affine=AFFINE, dtype=np.uint8),
        "affine": lambda p: save_volume(parc, p, affine=np.eye(4), dtype=np.uint8),
        "truncated": lambda p: p.write_bytes(gzip.compress(b"\x00" * 400)[:60]),
        "text": lambda p: p.write_text("not labels\n"),
    }
    for name, write_b in seconds.items():
        (root / name).mkdir()
        save_volume(parc, root / name / "a.nii.gz", affine=AFFINE, dtype=np.uint8)
        write_b(root / name / "b.nii.gz")
    return root


#: (labels folder, images folder, options, words of the message); case 'b' fails after 'a' was written.
MAKE_LABELS_CASES = {
    "labels_dir_missing": ("missing", "t1", None, ["missing", "--labels-dir"]),
    "labels_dir_empty": ("empty", "t1", None, ["empty", "no volume files", "labels folder"]),
    "images_dir_empty": ("good", "empty", None, ["empty", "images folder"]),
    "images_dir_missing": ("good", "missing", None, ["missing", "--images-dir"]),
    "image_missing": ("good", "t1_only_a", None, ["t1_only_a", "no image for case 'b'"]),
    "fractional_labels": ("fractional", "t1", None, ["b.nii.gz", "integer"]),
    "negative_labels": ("negative", "t1", None, ["b.nii.gz", "non-negative"]),
    "shape_mismatch": ("shape", "t1", None, ["b.nii.gz", "shape"]),
    "affine_mismatch": ("affine", "t1", None, ["b.nii.gz", "different affines"]),
    "truncated_labels": ("truncated", "t1", None, ["b.nii.gz", "not a readable NIfTI"]),
    "text_labels": ("text", "t1", None, ["b.nii.gz", "not a readable NIfTI"]),
    "unknown_preset": ("good", "t1", ["--preset", "organs"], ["organs", "tissue"]),
    "no_preset_or_classes": ("good", "t1", [], ["--preset", "--classes"]),
    "preset_and_classes": ("good", "t1", ["--preset", "tissue", "--classes", "A=1"], ["exactly one"]),
    "empty_class": ("good", "t1", ["--classes", "A="], ["class 1"]),
    "unknown_region": ("good", "t1", ["--classes", "A=Amygdala_X"], ["Amygdala_X"]),
    "tables_missing": ("good", "t1", ["--preset", "tissue", "--tables-dir", "{root}/missing_tables"],
                       ["missing_tables"]),
}


@pytest.mark.parametrize("case", list(MAKE_LABELS_CASES))
def test_make_labels(case, parcellations, capsys, tmp_path):
    labels, images, options, words = MAKE_LABELS_CASES[case]
    options = ["--preset", "tissue"] if options is None else [o.format(root=parcellations) for o in options]
    out = tmp_path / "new" / "seg"  # both folders are created by the command, and removed on failure
    line = assert_user_error(*run_main(["make-labels", "--labels-dir", parcellations / labels, "--images-dir",
                                        parcellations / images, "--out-dir", out, *options], capsys))
    for word in words:
        assert word in line, (word, line)
    assert _listing(tmp_path) == []


@pytest.mark.parametrize("where", ["out_dir_is_file", "out_dir_under_file"])
def test_make_labels_unwritable_out_dir(where, parcellations, capsys, tmp_path):
    (tmp_path / "notes.txt").write_text("keep me\n")
    out = tmp_path / "notes.txt" if where == "out_dir_is_file" else tmp_path / "notes.txt" / "seg"
    assert_user_error(*run_main(["make-labels", "--labels-dir", parcellations / "good", "--images-dir",
                                 parcellations / "t1", "--preset", "tissue", "--out-dir", out], capsys), "notes.txt")
    assert _listing(tmp_path) == ["notes.txt"] and (tmp_path / "notes.txt").read_text() == "keep me\n"


# ----------------------------------------------------------------------------- simulate-pet(-dataset)
@pytest.fixture(scope="module")
def label_dirs(tmp_path_factory) -> Path:
    """BrainWeb-class label folders: a.nii.gz good, b.nii.gz broken as the folder is named."""
    root = tmp_path_factory.mktemp("pet_labels")
    lab = np.zeros((16, 16, 16), np.uint8)
    lab[3:13, 3:13, 3:13] = 2  # grey matter
    lab[5:11, 5:11, 5:11] = 3  # white matter
    seconds = {
        "good": lambda p: save_volume(lab, p, affine=AFFINE, dtype=np.uint8),
        "text": lambda p: p.write_text("not labels\n"),
        "fractional": lambda p: save_volume(lab + np.float32(0.5), p, affine=AFFINE),
        "not_brainweb": lambda p: save_volume(lab * 10, p, affine=AFFINE, dtype=np.uint8),
        "four_d": lambda p: nib.save(nib.Nifti1Image(np.stack([lab, lab], -1), AFFINE), str(p)),
    }
    for name, write_b in seconds.items():
        (root / name).mkdir()
        save_volume(lab, root / name / "a.nii.gz", affine=AFFINE, dtype=np.uint8)
        write_b(root / name / "b.nii.gz")
    (root / "empty").mkdir()
    return root


SIM_DATASET_CASES = {
    "text_labels": ("text", [], ["b.nii.gz", "not a readable NIfTI"]),
    "fractional_labels": ("fractional", [], ["b.nii.gz", "integer"]),
    "not_brainweb_classes": ("not_brainweb", [], ["b.nii.gz", "BrainWeb"]),
    "four_d_labels": ("four_d", [], ["b.nii.gz", "3D"]),
    "labels_dir_empty": ("empty", [], ["empty", "no label maps"]),
    "labels_dir_missing": ("missing", [], ["missing", "not found"]),
    "dose": ("good", ["--dose", "0"], ["dose"]),
    "fwhm": ("good", ["--fwhm", "-1"], ["FWHM"]),
    "counts": ("good", ["--counts", "0"], ["counts"]),
    "scheme": ("good", ["--scheme", "spect"], ["--scheme", "spect"]),
    "head": ("good", ["--head", "t1.nii.gz"], ["--head"]),
    "limit": ("good", ["--limit", "0"], ["--limit"]),
}


@pytest.mark.parametrize("case", list(SIM_DATASET_CASES))
def test_simulate_pet_dataset(case, label_dirs, capsys, tmp_path):
    folder, options, words = SIM_DATASET_CASES[case]
    out = tmp_path / "new" / "pet"
    line = assert_user_error(*run_main(["simulate-pet-dataset", "--labels-dir", label_dirs / folder, "--out-dir", out,
                                        "--scheme", "brainweb", "--head", "none", *options], capsys))
    for word in words:
        assert word in line, (word, line)
    left = _listing(tmp_path)
    if folder in ("text", "fractional", "not_brainweb", "four_d"):
        # Subject 'a' was complete and is kept (a re-run skips it); nothing of the failing 'b', no temp file.
        assert any(name.endswith("a_pet.json") for name in left), left
        assert not [n for n in left if Path(n).name.startswith(("b_", ".")) or "tmp" in Path(n).name], left
    else:
        assert left == []  # refused before any work


@pytest.mark.parametrize("command", ["simulate-pet", "simulate-pet-dataset"])
@pytest.mark.parametrize("where", ["out_dir_is_file", "out_dir_under_file"])
def test_simulate_pet_unwritable_out_dir(command, where, label_dirs, capsys, tmp_path):
    (tmp_path / "notes.txt").write_text("keep me\n")
    out = tmp_path / "notes.txt" if where == "out_dir_is_file" else tmp_path / "notes.txt" / "pet"
    source = (["--labels-dir", label_dirs / "good"] if command == "simulate-pet-dataset"
              else [label_dirs / "good" / "a.nii.gz"])
    assert_user_error(*run_main([command, *source, "--out-dir", out, "--scheme", "brainweb", "--head", "none"], capsys),
                      "notes.txt")
    assert _listing(tmp_path) == ["notes.txt"] and (tmp_path / "notes.txt").read_text() == "keep me\n"


# ----------------------------------------------------------------------------- demo (refused before any work)
@pytest.mark.parametrize("options,words", [
    (["--out-dir", "{tmp}/notes.txt"], ["notes.txt", "not a folder"]),
    (["--out-dir", "{tmp}/notes.txt/demo"], ["notes.txt", "could not create"]),
    (["--task", "segment"], ["segment"]),
    (["--task", "bogus"], ["bogus"]),
    (["--steps", "0"], ["--steps"]),
    (["--samples", "0"], ["--samples"]),
    (["--size", "huge"], ["--size"]),
], ids=["out_dir_is_file", "out_dir_under_file", "task_without_model", "unknown_task", "steps", "samples", "size"])
def test_demo(options, words, capsys, tmp_path):
    (tmp_path / "notes.txt").write_text("keep me\n")
    options = [o.format(tmp=tmp_path) for o in options]
    line = assert_user_error(*run_main(["demo", "--size", "small", "--out-dir", tmp_path / "demo", *options], capsys))
    for word in words:
        assert word in line, (word, line)
    assert _listing(tmp_path) == ["notes.txt"] and (tmp_path / "notes.txt").read_text() == "keep me\n"


# ----------------------------------------------------------------------------- bench (refused before any run)
BENCH_CASES = {
    "memory_unknown_method": (["memory", "--methods", "nosuch", "--sizes", "8"], ["nosuch"]),
    "memory_size0": (["memory", "--sizes", "0"], ["--sizes"]),
    "memory_size_text": (["memory", "--sizes", "a,b"], ["--sizes", "a,b"]),
    "memory_repeats": (["memory", "--sizes", "8", "--repeats", "0"], ["--repeats"]),
    "memory_base": (["memory", "--sizes", "8", "--base", "0"], ["--base"]),
    "memory_device": (["memory", "--sizes", "8", "--device", "tpu"], ["--device", "tpu"]),
    "memory_json_dir": (["memory", "--sizes", "8", "--json", "{tmp}/missing_dir/m.json"], ["missing_dir"]),
    "memory_plot_is_folder": (["memory", "--sizes", "8", "--plot", "{tmp}"], ["is a folder"]),
    "memory_config": (["memory", "--sizes", "8", "--config", "{tmp}/missing.yaml"], ["missing.yaml"]),
    "sampling_unknown_method": (["sampling", "--methods", "nosuch", "--size", "8"], ["nosuch"]),
    "sampling_size0": (["sampling", "--size", "0"], ["--size"]),
    "sampling_size_2d": (["sampling", "--size", "8,8"], ["--size", "8,8"]),
    "sampling_size_text": (["sampling", "--size", "x"], ["--size"]),
    "sampling_size_and_input": (["sampling", "--size", "8", "--input", "{good}"], ["--size", "--input"]),
    "sampling_max_steps": (["sampling", "--size", "8", "--max-steps", "0"], ["--max-steps"]),
    "sampling_steps_unknown": (["sampling", "--size", "8", "--steps-per-method", "bogus=3"], ["bogus"]),
    "sampling_steps_text": (["sampling", "--size", "8", "--steps-per-method", "ppdm=x"], ["ppdm=x"]),
    "sampling_markdown_dir": (["sampling", "--size", "8", "--markdown", "{tmp}/missing_dir/s.md"], ["missing_dir"]),
}


@pytest.mark.parametrize("case", [*BENCH_CASES, *(f"sampling_input_{b}" for b in ("missing", "text", "flat2d", "nan"))])
def test_bench(case, corpus, capsys, tmp_path):
    if case.startswith("sampling_input_"):
        bad = corpus[case.removeprefix("sampling_input_")]
        args, words = ["sampling", "--input", str(bad)], [bad.name]
    else:
        args, words = BENCH_CASES[case]
        args = [a.format(tmp=tmp_path, good=corpus["good"]) for a in args]
    line = assert_user_error(*run_main(["bench", *args], capsys))
    for word in words:
        assert word in line, (word, line)
    assert _listing(tmp_path) == []


# ----------------------------------------------------------------------------- a full disk (ENOSPC), in-process
class _FullDiskFile:
    """A file on a disk with ``room`` bytes left: the write that does not fit fails with ENOSPC."""

    def __init__(self, f, room: int):
        self._f, self._room = f, room

    def write(self, data):
        if len(data) > self._room:
            self._f.write(data[: self._room])  # what fitted stays in the (temporary) file
            self._room = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._room -= len(data)
        return self._f.write(data)

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()


@pytest.fixture
def full_disk(monkeypatch):
    """``full_disk(folder, only="")``: files opened for writing in ``folder`` (names containing ``only``)
    fail with ENOSPC after 100 bytes. Patches ``open`` (gzip/nibabel .nii.gz, Path.write_*, csv, torch
    checkpoints via Path.write_bytes); C++ writers (SimpleITK) are covered by the subprocess tests."""

    def install(folder: Path, only: str = "") -> None:
        real_open = builtins.open
        target = os.path.realpath(folder)

        def fake_open(file, mode="r", *args, **kwargs):
            f = real_open(file, mode, *args, **kwargs)
            if (isinstance(file, (str, os.PathLike)) and set(mode) & set("wax+")
                    and os.path.dirname(os.path.realpath(file)) == target and only in os.path.basename(file)):
                return _FullDiskFile(f, 100)
            return f

        monkeypatch.setattr(builtins, "open", fake_open)
        monkeypatch.setattr(io, "open", fake_open)

    return install


@pytest.mark.parametrize("suffix", [".nii.gz", ".hv"])
def test_save_volume_disk_full(suffix, full_disk, tmp_path):
    full_disk(tmp_path)
    path = tmp_path / f"vol{suffix}"
    with pytest.raises(VoxdiffError, match=r"no space left on device; nothing was written") as exc:
        save_volume(np.random.default_rng(0).random((16, 16, 16)).astype(np.float32), path, affine=AFFINE)
    assert str(exc.value).startswith(str(path))
    assert _listing(tmp_path) == []


DISK_FULL_CASES = ["translate", "translate_uncertainty", "segment", "segment_probs", "export", "evaluate",
                   "make-labels", "simulate-pet", "simulate-pet-dataset"]


@pytest.mark.parametrize("case", DISK_FULL_CASES)
def test_disk_full(case, full_disk, corpus, translation_model, seg_models, presegs, parcellations, label_dirs,
                   capsys, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    good = corpus["good"]
    translate = ["translate", "-m", translation_model, "-i", good, "-o", out / "pred.nii.gz", "-k", "1"]
    segment = ["segment", "-m", seg_models["seg"], "-i", good, "-o", out / "seg.nii.gz", "--preseg", presegs["ok"],
               "-k", "1"]
    pet = ["--scheme", "brainweb", "--head", "none"]
    # (command, folder of the full disk, file names that fail, the file the message names)
    args, folder, only, named = {
        "translate": (translate, out, "", "pred.nii.gz"),
        "translate_uncertainty": (translate + ["-n", "2", "-u", out / "unc.nii.gz"], out, "unc", "unc.nii.gz"),
        "segment": (segment, out, "", "seg.nii.gz"),
        "segment_probs": (segment + ["-u", out / "unc.nii.gz", "--probs", out / "probs.nii.gz"], out, "probs",
                          "probs.nii.gz"),
        "export": (["export", translation_model, out / "model.pt"], out, "", "model.pt"),
        "evaluate": (["evaluate", "--pred", good, "--target", good, "--out", out / "m.csv"], out, "", "m.csv"),
        "make-labels": (["make-labels", "--labels-dir", parcellations / "good", "--images-dir", parcellations / "t1",
                         "--preset", "tissue", "--out-dir", out], out / "labels", "b.nii", "b.nii.gz"),
        "simulate-pet": (["simulate-pet", label_dirs / "good" / "a.nii.gz", "--out-dir", out, *pet], out, "pet.json",
                         "a_pet.json"),
        "simulate-pet-dataset": (["simulate-pet-dataset", "--labels-dir", label_dirs / "good", "--out-dir", out, *pet],
                                 out, "manifest", "manifest.csv"),
    }[case]
    full_disk(folder, only)
    line = assert_user_error(*run_main(args, capsys), named)
    assert "no space left on device" in line, line
    left = _listing(out)
    if case == "simulate-pet-dataset":
        # Completed subjects are kept (verified and skipped by a re-run); no manifest, no temporary file.
        assert not [n for n in left if "manifest" in n or Path(n).name.startswith(".") or "tmp" in n], left
    else:
        # Nothing: neither the file that failed, nor its temporary file, nor the outputs written before it.
        assert left == []


def test_environment_oserror_escaping_a_command_is_one_line(monkeypatch, corpus, capsys):
    # The CLI's safety net: a full disk outside the atomic writers (a log, a plot) is not a traceback.
    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/runs/x/train_log.csv")

    monkeypatch.setattr("voxdiff.cli.info.load_volume", disk_full)
    line = assert_user_error(*run_main(["info", corpus["good"]], capsys), "/runs/x/train_log.csv")
    assert "no space left on device" in line

    def bug(*args, **kwargs):  # other OSErrors are not the user's: they keep their traceback
        raise OSError(errno.EBADF, os.strerror(errno.EBADF))

    monkeypatch.setattr("voxdiff.cli.info.load_volume", bug)
    with pytest.raises(OSError, match="Bad file descriptor"):
        run_main(["info", corpus["good"]], capsys)


# ----------------------------------------------------------------------------- a real kernel error: RLIMIT_FSIZE
FILE_SIZE_LIMIT = 4096  # bytes: every output below is larger


def _limit_file_size() -> None:
    # In the child: a write past the limit fails with EFBIG instead of killing the process (SIGXFSZ).
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_SIZE_LIMIT, FILE_SIZE_LIMIT))


#: Run in the limited child: save_volume in every format, then CLI commands (one interpreter: one torch import).
_LIMITED_SCRIPT = """
import contextlib, io, json, sys
import numpy as np
from voxdiff.cli import main
from voxdiff.errors import VoxdiffError
from voxdiff.io import save_volume

results = []
a = np.random.default_rng(0).random((16, 16, 16)).astype(np.float32)
for path in json.loads(sys.argv[1]):
    try:
        save_volume(a, path, affine=np.eye(4))
        results.append({"path": path, "error": None})
    except VoxdiffError as exc:
        results.append({"path": path, "error": str(exc)})
for argv in json.loads(sys.argv[2]):
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            main(argv)
            code = 0
        except SystemExit as exc:
            code = exc.code
    results.append({"argv": argv, "code": code, "stderr": err.getvalue()})
print(json.dumps(results))
"""


def test_file_size_limit_real_kernel_error(corpus, translation_model, seg_models, presegs, tmp_path):
    # Every writer meets a real EFBIG: nibabel (.nii, .nii.gz), SimpleITK (.mha, .nrrd and the detached
    # .mhd/.nhdr headers, whose small header fits but whose data file does not), Interfile (.hv + .v),
    # torch checkpoints (export), and whole commands (translate, segment) whose model runs before the write.
    suffixes = [".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".nhdr", ".hv"]
    volumes = [str(tmp_path / f"vol{s}") for s in suffixes]
    commands = {
        "pred.nii.gz": ["translate", "-m", translation_model, "-i", corpus["good"], "-o", tmp_path / "pred.nii.gz",
                        "-k", "1"],
        # uint8 labels compress to almost nothing: uncompressed, 16^3 voxels exceed the limit.
        "seg.nii": ["segment", "-m", seg_models["preseg"], "-i", corpus["good"], "-o", tmp_path / "seg.nii"],
        "model.pt": ["export", translation_model, tmp_path / "model.pt"],
    }
    argvs = [[str(a) for a in argv] for argv in commands.values()]
    env = {**os.environ, "COLUMNS": "300", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", _LIMITED_SCRIPT, json.dumps(volumes), json.dumps(argvs)],
                          capture_output=True, text=True, env=env, timeout=300, preexec_fn=_limit_file_size)
    assert proc.returncode == 0, proc.stderr
    results = json.loads(proc.stdout)
    for path, res in zip(volumes, results[: len(volumes)]):
        assert res["error"] is not None, f"{path} was written past the file size limit"
        assert res["error"].startswith(f"{path}: ") and res["error"].endswith("nothing was written"), res
        if not path.endswith((".nrrd", ".nhdr")):  # ITK's NRRD writer names no system reason
            assert "file too large" in res["error"], res
    for name, res in zip(commands, results[len(volumes):]):
        line = assert_user_error(res["code"], "", res["stderr"], name)
        assert "file too large" in line, line
    assert _listing(tmp_path) == []
