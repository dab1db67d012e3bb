"""``voxdiff simulate-pet --physics projection`` and the resumable, part-split dataset builder."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from tests.helpers import muse_sim_tables, run_main
from voxdiff.data import load_manifest
from voxdiff.io import Volume, load_volume, save_volume

VENT, THAL, WM, GM = 4, 59, 81, 142
FAST = ["--views", "24", "--subsets", "4", "--iterations", "2", "--doses", "0.25,0.05", "--prompts", "1e6",
        "--oversample", "1", "--lesion-diameters", "6", "--lesions", "1"]


@pytest.fixture
def tables(tmp_path):
    return muse_sim_tables(tmp_path / "tables")


def _labels(shape=(20, 18, 16)) -> np.ndarray:
    lab = np.zeros(shape, np.int32)
    lab[2:-2, 2:-2, 2:-2] = GM
    lab[4:-4, 4:-4, 4:-4] = WM
    lab[9:11, 8:10, 7:9] = THAL
    lab[6:8, 6:8, 6:8] = VENT
    return lab


def _save(path, lab):
    return save_volume(Volume(lab.astype(np.float32), np.diag([2.0, 2.0, 2.0, 1.0])), path, dtype=np.uint8)


def _one_error_line(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in err, err
    return lines[0]


def test_simulate_pet_projection_writes_every_role(tables, tmp_path, capsys):
    lab = _save(tmp_path / "sub1.nii.gz", _labels())
    out = tmp_path / "out"
    code, stdout, err = run_main(["simulate-pet", lab, "-o", out, "--tables", tables, "--lesion-free-fraction", "0",
                                  *FAST], capsys)
    assert code == 0, err
    names = sorted(p.name for p in out.iterdir())
    roles = ["full", "low_25", "low_5", "nac_low_25", "nac_low_5", "truth", "activity", "mumap", "lesions"]
    assert names == sorted([f"sub1_{r}.nii.gz" for r in roles] + ["sub1_lesions.json", "sub1_pet.json"])
    les = json.loads((out / "sub1_lesions.json").read_text())
    assert les["case"] == "sub1" and les["lesion_free"] is False and les["lesions"][0]["diameter_mm"] == 6.0
    params = json.loads((out / "sub1_pet.json").read_text())
    assert params["physics"] == "projection" and params["mumap_units"] == "1/cm"
    assert params["counts"]["5"]["expected"] == pytest.approx(5e4)
    ids = load_volume(out / "sub1_lesions.nii.gz")
    assert ids.disk_dtype == np.uint16 and ids.array.max() == 1
    assert load_volume(out / "sub1_full.nii.gz").shape == (20, 18, 16)


@pytest.mark.parametrize("args, name", [
    (["--doses", "0.5,2"], "--doses"), (["--physics", "spect"], "--physics"), (["--subsets", "99"], "--subsets"),
    (["--lesion-contrast", "abc"], "--lesion-contrast"),
])
def test_simulate_pet_bad_options_exit_2_and_write_nothing(tables, tmp_path, capsys, args, name):
    lab = _save(tmp_path / "sub1.nii.gz", _labels())
    out = tmp_path / "out"
    code, _, err = run_main(["simulate-pet", lab, "-o", out, "--tables", tables, *FAST, *args], capsys)
    assert code == 2 and name in _one_error_line(err)
    assert not out.exists()


def _dataset(tmp_path, names, bad=()):
    d = tmp_path / "labels"
    d.mkdir()
    for n in names:
        lab = _labels().astype(np.float32)
        if n in bad:
            lab[0, 0, 0] = 0.5      # not an integer label map: this subject fails
        save_volume(Volume(lab, np.diag([2.0, 2.0, 2.0, 1.0])), d / f"{n}.nii.gz",
                    dtype=np.float32 if n in bad else np.uint8)
    return d


def test_dataset_parts_then_plain_run_skip_complete(tables, tmp_path, capsys):
    labels = _dataset(tmp_path, ["c", "a", "b"])
    out = tmp_path / "ds"
    base = ["simulate-pet-dataset", "--labels-dir", labels, "-o", out, "--tables", tables, *FAST]
    code, _, err = run_main([*base, "--part-id", "0", "--num-parts", "2"], capsys)
    assert code == 0, err
    assert (out / "a_pet.json").exists() and (out / "c_pet.json").exists() and not (out / "b_pet.json").exists()
    assert not (out / "manifest.csv").exists()          # part 1 has not run yet
    code, _, err = run_main([*base, "--part-id", "1", "--num-parts", "2"], capsys)
    assert code == 0, err
    cases = load_manifest(out / "manifest.csv", roles=["source", "target", "truth", "low_25", "nac_low_5", "lesions", "mumap", "label"])
    assert [c.id for c in cases] == ["a", "b", "c"]
    assert cases[0].paths["source"].name == "a_low_5.nii.gz" and cases[0].paths["target"].name == "a_full.nii.gz"
    stamp = os.stat(out / "a_full.nii.gz").st_mtime_ns
    (out / "manifest.csv").unlink()
    # A plain run finds everything complete: nothing re-simulated, the manifest written again.
    code, stdout, err = run_main(base, capsys)
    assert code == 0, err
    assert "0 simulated, 3 skipped" in " ".join(stdout.split())
    assert os.stat(out / "a_full.nii.gz").st_mtime_ns == stamp
    assert len(load_manifest(out / "manifest.csv", roles=["source"])) == 3
    # A corrupt file is not 'complete': that subject is simulated again.
    (out / "b_truth.nii.gz").write_bytes(b"not a volume")
    code, stdout, err = run_main(base, capsys)
    assert code == 0, err
    assert load_volume(out / "b_truth.nii.gz").shape == (20, 18, 16)
    # The same seed gives the same images whichever part ran the subject.
    single = tmp_path / "single"
    run_main(["simulate-pet", labels / "b.nii.gz", "-o", single, "--tables", tables, *FAST], capsys)
    np.testing.assert_array_equal(load_volume(single / "b_low_5.nii.gz").array, load_volume(out / "b_low_5.nii.gz").array)


def test_dataset_keeps_completed_subjects_when_one_fails(tables, tmp_path, capsys):
    labels = _dataset(tmp_path, ["a", "b", "c"], bad=("b",))
    out = tmp_path / "ds"
    code, _, err = run_main(["simulate-pet-dataset", "--labels-dir", labels, "-o", out, "--tables", tables, *FAST],
                            capsys)
    line = _one_error_line(err)
    assert code == 2 and "b:" in line and "1 of 3" in line
    assert not list(out.glob("b_*"))
    assert [c.id for c in load_manifest(out / "manifest.csv", roles=["source", "target"])] == ["a", "c"]
