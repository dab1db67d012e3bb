"""Bad-input corpus, ``simulate-pet`` and ``simulate-pet-dataset``: broken labels, options and output folders."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cli.bad_input_helpers import BROKEN_VOLUMES, listing, _wide_console  # noqa: F401  (autouse)
from tests.helpers import assert_user_error, run_main


@pytest.mark.parametrize("bad", BROKEN_VOLUMES + ["empty_labels", "good"])
def test_simulate_pet(bad, corpus, capsys, tmp_path):
    # "good" holds non-integer values: not a label map.
    out = tmp_path / "pet"
    out.mkdir()
    assert_user_error(*run_main(["simulate-pet", corpus[bad], "--out-dir", out, "--head", "none"], capsys),
                      corpus[bad].name)
    assert not any(out.iterdir()), list(out.iterdir())


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
    left = listing(tmp_path)
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
    assert listing(tmp_path) == ["notes.txt"] and (tmp_path / "notes.txt").read_text() == "keep me\n"
