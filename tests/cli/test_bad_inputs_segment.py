"""Bad-input corpus, ``segment``: broken inputs, pre-segmentations, models and options."""

from __future__ import annotations

import pytest

from tests.cli.bad_input_helpers import (BAD_CHECKPOINTS, BROKEN_VOLUMES, listing, models_by_task,
                                       _wide_console)  # noqa: F401  (autouse)
from tests.helpers import assert_user_error, run_main


BAD_PRESEGS = {"shape": "shape", "affine": "different affines", "range": "0..2", "negative": "0..2",
               "fractional": "integer", "text": "not a readable NIfTI", "missing": "not found"}


@pytest.mark.parametrize("bad", BROKEN_VOLUMES + ["constant"])
def test_segment_input(bad, corpus, seg_models, presegs, capsys, tmp_path):
    args = ["segment", "-m", seg_models["seg"], "-i", corpus[bad], "-o", tmp_path / "s.nii.gz", "--preseg",
            presegs["ok"], "-u", tmp_path / "u.nii.gz"]
    line = assert_user_error(*run_main(args, capsys), corpus[bad].name)
    if bad == "constant":
        assert "constant" in line, line
    assert listing(tmp_path) == []


@pytest.mark.parametrize("bad", sorted(BAD_PRESEGS))
def test_segment_bad_preseg(bad, corpus, seg_models, presegs, capsys, tmp_path):
    args = ["segment", "-m", seg_models["seg"], "-i", corpus["good"], "-o", tmp_path / "s.nii.gz", "--preseg",
            presegs[bad], "--probs", tmp_path / "p.nii.gz"]
    line = assert_user_error(*run_main(args, capsys), presegs[bad].name)
    assert BAD_PRESEGS[bad] in line, line
    assert listing(tmp_path) == []


@pytest.mark.parametrize("bad", sorted(BAD_CHECKPOINTS) + ["translation", "synthesis"])
def test_segment_bad_model(bad, bad_checkpoints, translation_model, seg_models, synthesis_model, corpus, presegs,
                           capsys, tmp_path):
    model = bad_checkpoints.get(bad) or models_by_task(translation_model, seg_models, synthesis_model)[bad]
    line = assert_user_error(*run_main(["segment", "-m", model, "-i", corpus["good"], "-o", tmp_path / "s.nii.gz",
                                        "--preseg", presegs["ok"]], capsys), model.name)
    assert BAD_CHECKPOINTS.get(bad, f"task '{bad}'") in line, line
    assert listing(tmp_path) == []


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
             **{k: str(v) for k, v in models_by_task(translation_model, seg_models, synthesis_model).items()},
             "text": str(bad_checkpoints["text"]), "out": str(out), "notes": str(tmp_path / "notes.txt")}
    args = [a.format(**names) for a in args]
    if "-o" not in args:
        args += ["-o", str(out / "s.nii.gz")]
    line = assert_user_error(*run_main(["segment", "-m", names[model], "-i", corpus["good"], *args], capsys))
    for word in words:
        assert word in line, (word, line)
    assert listing(out) == []
