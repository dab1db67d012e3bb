"""The path plan (voxdiff.io.guard) and staged multi-output writes (voxdiff.io.atomic.staged_outputs)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from voxdiff.errors import VoxdiffError
from voxdiff.io import load_volume, save_volume
from voxdiff.io.atomic import atomic_write_text, staged_outputs
from voxdiff.io.guard import check_path_plan, resolved


@pytest.fixture
def vol(tmp_path):
    path = tmp_path / "vol.nii.gz"
    path.write_bytes(b"input")
    return path


def test_output_equal_to_input_in_every_spelling(vol, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "link.nii.gz").symlink_to(vol)
    (tmp_path / "sub").mkdir()
    for spelling in [vol, "vol.nii.gz", "./vol.nii.gz", "sub/../vol.nii.gz", "link.nii.gz", tmp_path / "link.nii.gz"]:
        with pytest.raises(VoxdiffError, match=r"--output is the same file as --input") as exc:
            check_path_plan({"--input": vol}, {"--output": spelling})
        assert str(exc.value).startswith(str(Path(spelling))) and len(str(exc.value).splitlines()) == 1


def test_two_outputs_naming_one_file(tmp_path):
    with pytest.raises(VoxdiffError, match=r"--output and --uncertainty name the same file"):
        check_path_plan({}, {"--output": tmp_path / "a.nii.gz", "--uncertainty": tmp_path / "x" / ".." / "a.nii.gz"})
    with pytest.raises(VoxdiffError, match=r"--out-dir twice name the same file"):
        check_path_plan({}, {"--out-dir": [tmp_path / "a", tmp_path / "a"]})


def test_folders(tmp_path):
    cases = tmp_path / "cases"
    cases.mkdir()
    series = tmp_path / "series"  # a DICOM series folder read as one input
    series.mkdir()
    with pytest.raises(VoxdiffError, match=r"writes into --labels-dir .*read as input cases"):
        check_path_plan({}, {"--out-dir": cases / "x_full.nii.gz"}, input_folders={"--labels-dir": cases})
    with pytest.raises(VoxdiffError, match=r"lies inside --input"):
        check_path_plan({"--input": series}, {"--output": series / "out.nii.gz"})
    with pytest.raises(VoxdiffError, match=r"holds --input"):
        check_path_plan({"--input": series / "a.dcm"}, {"--output": series})
    # Below an input folder (not directly in it) and beside inputs is fine.
    check_path_plan({"--input": cases / "a.nii.gz"}, {"--output": cases / "out" / "a.nii.gz"},
                    input_folders={"--input": cases})


def test_existing_outputs_and_ignored_specs(vol, tmp_path):
    out = tmp_path / "out.nii.gz"
    out.write_bytes(b"earlier")
    check_path_plan({"--input": vol, "--model": "pretrained:pet-denoise", "--start": None}, {"--output": out})
    with pytest.raises(VoxdiffError, match=r"out.nii.gz: --output exists .*pass --overwrite"):
        check_path_plan({"--input": vol}, {"--output": out}, existing="--overwrite")
    assert resolved("~") == resolved(os.path.expanduser("~"))


def test_staged_outputs_commit_together(tmp_path):
    a, b = tmp_path / "a.nii.gz", tmp_path / "b.mhd"
    with staged_outputs() as stage:
        save_volume(np.ones((4, 4, 4), np.float32), stage.path(a), affine=np.eye(4))
        save_volume(np.zeros((4, 4, 4), np.float32), stage.path(b), affine=np.eye(4))
        assert not a.exists() and not b.exists()  # nothing in place before the block ends
    assert load_volume(a).array.max() == 1 and load_volume(b).shape == (4, 4, 4)  # .mhd found its data file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.nii.gz", "b.mhd", "b.zraw"]


@pytest.mark.parametrize("interrupt", [VoxdiffError("second output: bad"), KeyboardInterrupt()])
def test_staged_outputs_failure_keeps_earlier_files(interrupt, tmp_path):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("earlier a\n")
    b.write_text("earlier b\n")
    with pytest.raises(type(interrupt)):
        with staged_outputs() as stage:
            atomic_write_text(stage.path(a), "new a\n")
            raise interrupt
    assert a.read_text() == "earlier a\n" and b.read_text() == "earlier b\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.txt"]  # no temporary file


def test_staged_outputs_name_the_output_and_remove_created_folders(tmp_path):
    out_dir = tmp_path / "new" / "deep"
    with pytest.raises(VoxdiffError) as exc:
        with staged_outputs(out_dir) as stage:
            tmp = stage.path(out_dir / "x.txt")
            raise VoxdiffError(f"{tmp}: could not write")
    assert str(exc.value) == f"{out_dir / 'x.txt'}: could not write"
    assert list(tmp_path.iterdir()) == []
