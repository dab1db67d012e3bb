"""The PET case/dataset library called directly (no CLI): files, resume, failures, parts (tiny BrainWeb maps)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from voxdiff.cases import Part
from voxdiff.data import load_manifest
from voxdiff.errors import VoxdiffError
from voxdiff.io import Volume, load_volume, save_volume
from voxdiff.sim import (
    ImageSettings,
    ProjectionSettings,
    build_pet_dataset,
    case_files,
    simulate_case_to_files,
)
from voxdiff.sim.dataset import dataset_outputs

SHAPE = (16, 16, 8)
# A few views, one OSEM iteration, one dose: a case takes a fraction of a second on one core.
FAST = ProjectionSettings(doses=(0.25,), prompts=1e5, iterations=1, subsets=2, n_views=8, oversample=1,
                          lesions=1, lesion_diameters=(4.0,))


def _brainweb(shift: int = 0) -> np.ndarray:
    """BrainWeb classes: skin (5) around CSF (1), grey (2) and white (3) matter."""
    lab = np.zeros(SHAPE, np.int32)
    lab[1:-1, 1:-1, 1:-1] = 5
    lab[2:-2, 2:-2, 2:-2] = 1
    lab[3:-3, 3:-3, 2:-2] = 2
    lab[5 + shift:-5, 5:-5, 3:-3] = 3
    return lab


def _save(path, lab, dtype=np.uint8):
    return save_volume(Volume(lab.astype(np.float32), np.diag([2.0, 2.0, 2.0, 1.0])), path, dtype=dtype)


def _break(path):
    """Fractional labels (a probability map, not a label map): the case fails."""
    _save(path, _brainweb() + 0.5, dtype=np.float32)


@pytest.fixture
def maps(tmp_path):
    """Label maps a, b, c in tmp_path/labels."""
    d = tmp_path / "labels"
    d.mkdir()
    return [_save(d / f"{c}.nii.gz", _brainweb(i)) for i, c in enumerate("abc")]


def _files(folder):
    return sorted(p.name for p in folder.iterdir())


def test_image_case_writes_its_files_and_refuses_to_replace_them(maps, tmp_path):
    out = tmp_path / "out"
    paths, params = simulate_case_to_files(maps[0], out, settings=ImageSettings(dose_fraction=0.1), scheme="brainweb",
                                           seed=3)
    assert paths == case_files(out, "a", ImageSettings()) and _files(out) == ["a_full.nii.gz", "a_low.nii.gz",
                                                                             "a_pet.json"]
    assert json.loads(paths["json"].read_text()) == params
    assert params["case"] == "a" and params["seed_base"] == 3 and params["dose_fraction"] == 0.1
    assert load_volume(paths["low"]).shape == SHAPE
    before = paths["full"].read_bytes()
    with pytest.raises(VoxdiffError, match="--overwrite") as exc:
        simulate_case_to_files(maps[0], out, settings=ImageSettings(), scheme="brainweb", seed=4)
    assert str(paths["full"]) in str(exc.value) and paths["full"].read_bytes() == before
    simulate_case_to_files(maps[0], out, settings=ImageSettings(), scheme="brainweb", seed=4, overwrite=True)
    assert paths["full"].read_bytes() != before


def test_projection_case_writes_every_role(maps, tmp_path):
    out = tmp_path / "out"
    paths, params = simulate_case_to_files(maps[1], out, settings=FAST, case="x1", scheme="brainweb")
    roles = ["full", "low_25", "nac_low_25", "truth", "activity", "mumap", "lesions"]
    assert list(paths) == roles + ["lesions_json", "json"]
    assert _files(out) == sorted([f"x1_{r}.nii.gz" for r in roles] + ["x1_lesions.json", "x1_pet.json"])
    assert params["physics"] == "projection" and params["case"] == "x1" and params["labels"] == str(maps[1].resolve())
    assert load_volume(paths["lesions"]).disk_dtype == np.uint16


def test_dataset_keeps_completed_cases_reports_a_failure_and_resumes(maps, tmp_path):
    out = tmp_path / "ds"
    _break(maps[1])
    calls = []
    report = build_pet_dataset(maps, out, settings=FAST, scheme="brainweb",
                               progress=lambda i, n, c: calls.append((i, n, c and (c.case, c.status))))
    assert calls == [(0, 3, None), (1, 3, ("a", "built")), (2, 3, ("b", "failed")), (3, 3, ("c", "built"))]
    failed = report.with_status("failed")
    assert [c.case for c in failed] == ["b"] and str(maps[1]) in failed[0].error
    assert not any(p.exists() for p in failed[0].paths.values())
    assert report.missing == ["b"] and [c.id for c in load_manifest(report.manifest)] == ["a", "c"]
    with pytest.raises(VoxdiffError, match=r"1 of 3 subject\(s\) failed \(the others are kept\): b: "):
        report.raise_for_failures()

    _save(maps[1], _brainweb(1))  # fixed: the re-run simulates b only
    a_full = out / "a_full.nii.gz"
    stamp = a_full.stat().st_mtime_ns
    again = build_pet_dataset(maps, out, settings=FAST, scheme="brainweb")
    assert [(c.case, c.status) for c in again.cases] == [("a", "skipped"), ("b", "built"), ("c", "skipped")]
    assert a_full.stat().st_mtime_ns == stamp and again.missing == []
    again.raise_for_failures()
    cases = load_manifest(again.manifest)
    assert [c.id for c in cases] == ["a", "b", "c"] and cases[0].path("source") == out / "a_low_25.nii.gz"
    written = {p for p in out.iterdir()}
    assert written == set(dataset_outputs(maps, out, FAST))
    assert json.loads((out / "dataset.json").read_text())["missing"] == []


def test_dataset_refuses_other_settings_unless_overwrite(maps, tmp_path):
    out = tmp_path / "ds"
    build_pet_dataset(maps[:1], out, settings=FAST, scheme="brainweb")
    with pytest.raises(VoxdiffError, match="other settings or another --seed") as exc:
        build_pet_dataset(maps[:1], out, settings=FAST, scheme="brainweb", seed=1)
    assert "a_pet.json" in str(exc.value)
    report = build_pet_dataset(maps[:1], out, settings=FAST, scheme="brainweb", seed=1, overwrite=True)
    assert [c.status for c in report.cases] == ["built"]
    assert json.loads((out / "a_pet.json").read_text())["seed_base"] == 1


def test_parts_split_the_cases_and_the_last_part_writes_the_manifest(maps, tmp_path):
    out = tmp_path / "ds"
    first = build_pet_dataset(maps[::-1], out, settings=FAST, scheme="brainweb", part=Part(0, 2))
    assert [c.case for c in first.cases] == ["a", "c"]  # round-robin on the sorted ids, whatever the order given
    assert first.manifest is None and first.missing == ["b"] and not (out / "manifest.csv").exists()
    second = build_pet_dataset(maps, out, settings=FAST, scheme="brainweb", part=Part(1, 2))
    assert [(c.case, c.status) for c in second.cases] == [("b", "built")]
    assert second.missing == [] and [c.id for c in load_manifest(second.manifest)] == ["a", "b", "c"]


def test_image_dataset_is_all_or_nothing(maps, tmp_path):
    out = tmp_path / "ds"
    report = build_pet_dataset(maps, out, settings=ImageSettings(), scheme="brainweb")
    assert [c.status for c in report.cases] == ["built"] * 3 and report.summary["cases"] == 3
    assert [c.id for c in load_manifest(report.manifest)] == ["a", "b", "c"]
    with pytest.raises(VoxdiffError, match="--overwrite"):  # an earlier dataset is replaced only when asked
        build_pet_dataset(maps, out, settings=ImageSettings(), scheme="brainweb")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    _break(maps[2])
    with pytest.raises(VoxdiffError, match="integer values") as exc:
        build_pet_dataset(maps, out, settings=ImageSettings(), scheme="brainweb", seed=5, overwrite=True)
    assert str(maps[2]) in str(exc.value)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    with pytest.raises(VoxdiffError, match="part="):
        build_pet_dataset(maps, tmp_path / "other", settings=ImageSettings(), scheme="brainweb", part=Part(0, 2))
