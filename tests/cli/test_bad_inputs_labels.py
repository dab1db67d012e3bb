"""Bad-input corpus, ``make-labels``: broken parcellations, folders, presets and output folders."""

from __future__ import annotations

import pytest

from tests.cli.bad_input_helpers import listing, _wide_console  # noqa: F401  (autouse)
from tests.helpers import assert_user_error, run_main


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
    if "b.nii.gz" in words:  # a dataset builder keeps the case completed before the bad one, in its manifest
        assert "1 of 2 case(s) failed" in line, line
        assert listing(tmp_path) == ["new", "new/seg", "new/seg/classes.json", "new/seg/labels",
                                     "new/seg/labels/a.nii.gz", "new/seg/manifest.csv"]
        assert (out / "manifest.csv").read_text().splitlines()[1].startswith("a,")
    else:
        assert listing(tmp_path) == []


@pytest.mark.parametrize("where", ["out_dir_is_file", "out_dir_under_file"])
def test_make_labels_unwritable_out_dir(where, parcellations, capsys, tmp_path):
    (tmp_path / "notes.txt").write_text("keep me\n")
    out = tmp_path / "notes.txt" if where == "out_dir_is_file" else tmp_path / "notes.txt" / "seg"
    assert_user_error(*run_main(["make-labels", "--labels-dir", parcellations / "good", "--images-dir",
                                 parcellations / "t1", "--preset", "tissue", "--out-dir", out], capsys), "notes.txt")
    assert listing(tmp_path) == ["notes.txt"] and (tmp_path / "notes.txt").read_text() == "keep me\n"


def test_make_labels_refuses_two_files_of_one_case(parcellations, capsys, tmp_path):
    import shutil

    root = tmp_path / "root"  # the label tables lie beside the labels folder
    shutil.copytree(parcellations, root)
    labels = root / "good"
    shutil.copy(labels / "a.nii.gz", labels / "a.nii")  # not a real .nii, but it is never read: refused first
    line = assert_user_error(*run_main(["make-labels", "--labels-dir", labels, "--images-dir", root / "t1",
                                        "--preset", "tissue", "--out-dir", tmp_path / "seg"], capsys))
    assert "'a'" in line and "a.nii" in line and "a.nii.gz" in line and "twice" in line, line
    assert not (tmp_path / "seg").exists()
