"""Bad-input corpus, ``demo``: bad options and output folders are refused before any work."""

from __future__ import annotations

import pytest

from tests.cli.bad_input_helpers import listing, _wide_console  # noqa: F401  (autouse)
from tests.helpers import assert_user_error, run_main


# ----------------------------------------------------------------------------- demo (refused before any work)
@pytest.mark.parametrize("options,words", [
    (["--out-dir", "{tmp}/notes.txt"], ["notes.txt", "not a folder"]),
    (["--out-dir", "{tmp}/notes.txt/demo"], ["notes.txt", "could not create"]),
    (["--task", "synthesize"], ["synthesize"]),  # segment ships; synthesis does not yet
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
    assert listing(tmp_path) == ["notes.txt"] and (tmp_path / "notes.txt").read_text() == "keep me\n"


def test_demo_keeps_an_earlier_demo_unless_overwrite(capsys, tmp_path):
    out = tmp_path / "demo"
    out.mkdir()
    (out / "metrics.json").write_text('{"earlier": true}\n')
    line = assert_user_error(*run_main(["demo", "--size", "small", "-k", "1", "-n", "1", "--out-dir", out], capsys))
    assert "metrics.json" in line and "--overwrite" in line, line
    assert listing(out) == ["metrics.json"] and (out / "metrics.json").read_text() == '{"earlier": true}\n'
    code, _, err = run_main(["demo", "--size", "small", "-k", "1", "-n", "1", "--out-dir", out, "--overwrite"], capsys)
    assert code == 0, err
    assert '"earlier"' not in (out / "metrics.json").read_text() and (out / "ppdm.nii.gz").is_file()
