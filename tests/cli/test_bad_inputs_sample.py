"""Bad-input corpus, ``sample``: broken or foreign checkpoints, options and outputs."""

from __future__ import annotations

import pytest

from tests.cli.bad_input_helpers import BAD_CHECKPOINTS, listing, models_by_task, _wide_console  # noqa: F401  (autouse)
from tests.helpers import assert_user_error, run_main


# ----------------------------------------------------------------------------- sample
@pytest.mark.parametrize("case", sorted(BAD_CHECKPOINTS) + ["translation", "seg", "steps0", "steps-1", "steps>T", "eta",
                                                            "missing_dir", "folder", "count_without_i"])
def test_sample(case, bad_checkpoints, translation_model, seg_models, synthesis_model, capsys, tmp_path):
    models = models_by_task(translation_model, seg_models, synthesis_model)
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
    assert listing(tmp_path) == []
