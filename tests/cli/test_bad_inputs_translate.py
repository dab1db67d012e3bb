"""Bad-input corpus, ``translate``: broken inputs, models, checkpoints, options and outputs."""

from __future__ import annotations

import pytest

from tests.cli.bad_input_helpers import (BAD_CHECKPOINTS, BROKEN_VOLUMES, listing, models_by_task, no_output,
                                       _wide_console)  # noqa: F401  (autouse)
from tests.helpers import assert_user_error, run_main


@pytest.mark.parametrize("bad", BROKEN_VOLUMES + ["constant"])
def test_translate_input(bad, corpus, capsys, tmp_path, translation_model):
    out = tmp_path / "out.nii.gz"
    line = assert_user_error(*run_main(["translate", "-m", translation_model, "-i", corpus[bad], "-o", out, "-k", "1"],
                                       capsys), corpus[bad].name)
    if bad == "constant":
        assert "constant" in line, line
    no_output(out)


def test_translate_bad_model_and_output(corpus, capsys, tmp_path, translation_model):
    out = tmp_path / "out.nii.gz"
    assert_user_error(*run_main(["translate", "-m", corpus["text"], "-i", corpus["good"], "-o", out], capsys),
                      corpus["text"].name)
    assert_user_error(*run_main(["translate", "-m", tmp_path / "none.pt", "-i", corpus["good"], "-o", out], capsys),
                      "none.pt")
    no_output(out)
    bad_out = tmp_path / "missing_dir" / "out.nii.gz"
    assert_user_error(*run_main(["translate", "-m", translation_model, "-i", corpus["good"], "-o", bad_out], capsys),
                      "missing_dir")
    assert_user_error(*run_main(["translate", "-m", translation_model, "-i", corpus["good"], "-o", out,
                                 "--uncertainty", tmp_path / "u.nii.gz"], capsys), "--samples")
    no_output(out, tmp_path / "u.nii.gz")
    # A checkpoint of another task is refused by the sample command.
    assert_user_error(*run_main(["sample", "-m", translation_model, "-o", tmp_path / "s.nii.gz"], capsys), "task")
    no_output(tmp_path / "s.nii.gz")


# ----------------------------------------------------------------------------- translate: model, steps
@pytest.mark.parametrize("bad", sorted(BAD_CHECKPOINTS))
def test_translate_bad_checkpoint(bad, bad_checkpoints, corpus, capsys, tmp_path):
    line = assert_user_error(*run_main(["translate", "-m", bad_checkpoints[bad], "-i", corpus["good"],
                                        "-o", tmp_path / "out.nii.gz"], capsys), bad_checkpoints[bad].name)
    assert BAD_CHECKPOINTS[bad] in line, line
    assert listing(tmp_path) == []


@pytest.mark.parametrize("args,expect", [
    (["-k", "0"], "--steps must lie in 1..1000"), (["-k", "-1"], "--steps"), (["-k", "1001"], "got 1001"),
    (["--eta", "2"], "eta"), (["--model-of", "synthesis"], "task 'synthesis'"),
    (["--model-of", "seg"], "task 'segmentation'"),
], ids=["steps0", "steps-1", "steps>T", "eta", "synthesis_ckpt", "segmentation_ckpt"])
def test_translate_bad_options(args, expect, translation_model, seg_models, synthesis_model, corpus, capsys, tmp_path):
    model = translation_model
    if args[0] == "--model-of":
        model, args = models_by_task(translation_model, seg_models, synthesis_model)[args[1]], []
    line = assert_user_error(*run_main(["translate", "-m", model, "-i", corpus["good"], "-o", tmp_path / "out.nii.gz",
                                        *args], capsys))
    assert expect in line, line
    assert listing(tmp_path) == []
