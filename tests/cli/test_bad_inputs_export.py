"""Bad-input corpus, ``export``: broken checkpoints and unusable output paths."""

from __future__ import annotations

import pytest

from tests.cli.bad_input_helpers import BAD_CHECKPOINTS, listing, _wide_console  # noqa: F401  (autouse)
from tests.helpers import assert_user_error, run_main


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
    assert listing(tmp_path / "out") == expected
