"""Paths and re-runs over every command (issue #13): an output that is an input, two outputs on one file,
output folders that are input folders, earlier results, failures during a re-run, bracketed paths.

Each refusal is exit 2, one line, no traceback, and leaves every file under tmp_path byte-identical
(sha256 before and after) with no temporary file; each re-run keeps or refuses earlier results.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.cli.bad_input_helpers import AFFINE, _wide_console  # noqa: F401  (autouse)
from tests.helpers import assert_user_error, fake_muse_tables, make_pairs, run_main
from voxdiff.io import load_volume, save_volume

PET = ["--scheme", "brainweb", "--head", "none"]
PET_FAST = [*PET, "--doses", "0.1", "--nac-doses", "", "--views", "12", "--subsets", "2", "--iterations", "1",
            "--oversample", "1", "--lesions", "0", "--prompts", "1e6"]


def checksums(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` (symlinks by their target's content)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def temp_files(root: Path) -> list[str]:
    return [str(p.relative_to(root)) for p in root.rglob("*") if p.name.startswith(".")]


def refused(args, capsys, root: Path, *names: str) -> str:
    """Run ``args``; assert a one-line user error naming ``names`` and nothing changed under ``root``."""
    before = checksums(root)
    line = assert_user_error(*run_main(args, capsys), *[str(n) for n in names])
    assert checksums(root) == before
    assert temp_files(root) == []
    return line


@pytest.fixture
def work(tmp_path, corpus, translation_model, seg_models, presegs):
    """tmp_path with a volume, a label map, a pre-segmentation and a run folder holding copies of the models."""
    shutil.copy(corpus["good"], tmp_path / "vol.nii.gz")
    shutil.copy(presegs["ok"], tmp_path / "pre.nii.gz")
    (tmp_path / "run").mkdir()
    shutil.copy(translation_model, tmp_path / "run" / "last.pt")
    shutil.copy(seg_models["seg"], tmp_path / "seg.pt")
    (tmp_path / "in").mkdir()
    for name in ("a", "b"):
        shutil.copy(corpus["good"], tmp_path / "in" / f"{name}.nii.gz")
    return tmp_path


def translate(work, *args):
    return ["translate", "-m", work / "run" / "last.pt", "-k", "1", *args]


# ----------------------------------------------------------------------------- an output that is an input
@pytest.mark.parametrize("spelling", ["same", "dot", "dotdot", "symlink"])
def test_translate_output_is_its_input(spelling, work, capsys, monkeypatch):
    monkeypatch.chdir(work)
    out = {"same": work / "vol.nii.gz", "dot": "./vol.nii.gz", "dotdot": "in/../vol.nii.gz",
           "symlink": work / "link.nii.gz"}[spelling]
    if spelling == "symlink":
        (work / "link.nii.gz").symlink_to(work / "vol.nii.gz")
    line = refused(translate(work, "-i", work / "vol.nii.gz", "-o", out), capsys, work, "--output", "--input")
    assert "same file" in line


def test_translate_output_and_uncertainty_on_one_file(work, capsys):
    refused(translate(work, "-i", work / "vol.nii.gz", "-n", "2", "-o", work / "x.nii.gz", "-u", work / "x.nii.gz"),
            capsys, work, "--output", "--uncertainty", "same file")


def test_translate_output_is_the_model(work, capsys):
    # -o naming the checkpoint (through the run folder's spelling) is refused before the model loads.
    refused(translate(work, "-i", work / "vol.nii.gz", "-o", work / "run" / ".." / "run" / "last.pt"), capsys, work,
            "--model", "same file")


def test_predict_output_is_its_input(work, capsys):
    refused(["predict", "-m", work / "run", "-i", work / "vol.nii.gz", "-o", work / "vol.nii.gz"], capsys, work,
            "--output", "--input")


@pytest.mark.parametrize("case", ["probs_is_output", "preseg_is_output", "uncertainty_is_preseg"])
def test_segment_outputs_and_inputs(case, work, capsys):
    seg = work / "seg.nii.gz"
    extra = {"probs_is_output": ["-o", seg, "--preseg", work / "pre.nii.gz", "--probs", seg],
             "preseg_is_output": ["-o", work / "pre.nii.gz", "--preseg", work / "pre.nii.gz"],
             "uncertainty_is_preseg": ["-o", seg, "--preseg", work / "pre.nii.gz", "-n", "2", "-u",
                                       work / "pre.nii.gz"]}[case]
    refused(["segment", "-m", work / "seg.pt", "-i", work / "vol.nii.gz", "-k", "1", *extra], capsys, work,
            "same file")


@pytest.mark.parametrize("which", ["target", "pred", "summary_is_pred"])
def test_evaluate_out_names_an_input(which, work, capsys):
    pred, target = work / "in" / "a.nii.gz", work / "vol.nii.gz"
    opt, path = {"target": ("--out", target), "pred": ("--out", pred), "summary_is_pred": ("--summary", pred)}[which]
    refused(["evaluate", "--pred", pred, "--target", target, opt, path], capsys, work, opt, "same file")


def test_evaluate_out_names_a_prediction_of_a_folder(work, capsys):
    refused(["evaluate", "--pred-dir", work / "in", "--target-dir", work / "in", "--out", work / "in" / "b.nii.gz"],
            capsys, work, "--out", "same file")


@pytest.mark.parametrize("spelling", ["same", "run_folder", "dotdot"])
def test_export_onto_its_own_checkpoint(spelling, work, capsys):
    src = work / "run" if spelling == "run_folder" else work / "run" / "last.pt"
    out = work / "run" / ".." / "run" / "last.pt" if spelling == "dotdot" else work / "run" / "last.pt"
    refused(["export", src, out], capsys, work, "OUTPUT", "CHECKPOINT", "same file")


def test_sample_onto_its_checkpoint(work, synthesis_model, capsys):
    shutil.copy(synthesis_model, work / "run" / "last.pt")
    refused(["sample", "-m", work / "run", "-o", work / "run" / "last.pt"], capsys, work, "--model", "same file")


def test_demo_out_dir_holding_its_model_under_an_output_name(work, capsys):
    shutil.copy(work / "run" / "last.pt", work / "metrics.json")  # a checkpoint under a name the demo writes
    refused(["demo", "--out-dir", work, "-m", work / "metrics.json", "--size", "small", "-n", "1"], capsys, work,
            "--out-dir", "--model", "same file")


# ----------------------------------------------------------------------------- folders
def test_translate_folder_into_itself_or_one_folder_for_two_outputs(work, capsys):
    refused(translate(work, "-i", work / "in", "-o", work / "in"), capsys, work, "must differ")
    refused(translate(work, "-i", work / "in", "-n", "2", "-o", work / "o", "-u", work / "o"), capsys, work,
            "its own folder")


def test_translate_folder_into_a_subfolder_or_a_parent(work, capsys):
    # Below the input folder and above it the names cannot collide: allowed, and the inputs stay as they were.
    before = checksums(work / "in")
    assert run_main(translate(work, "-i", work / "in", "-o", work / "in" / "out"), capsys)[0] == 0
    assert sorted(p.name for p in (work / "in" / "out").iterdir()) == ["a.nii.gz", "b.nii.gz"]
    assert {k: v for k, v in checksums(work / "in").items() if not k.startswith("out/")} == before


def test_segment_folder_probs_onto_preseg_folder(work, capsys):
    (work / "pre").mkdir()
    for name in ("a", "b"):
        shutil.copy(work / "pre.nii.gz", work / "pre" / f"{name}.nii.gz")
    refused(["segment", "-m", work / "seg.pt", "-i", work / "in", "--preseg", work / "pre", "-o", work / "pre",
             "-k", "1"], capsys, work, "--output", "--preseg", "same file")


@pytest.fixture
def parc(tmp_path, parcellations):
    """A MUSE-like data folder under tmp_path: X/labels (the parcellations) and X/t1 (images)."""
    root = tmp_path / "X"
    shutil.copytree(parcellations / "good", root / "labels")
    shutil.copytree(parcellations / "t1", root / "t1")
    fake_muse_tables(root)
    return root


def make_labels(parc, out, *extra):
    return ["make-labels", "--labels-dir", parc / "labels", "--images-dir", parc / "t1", "--preset", "tissue",
            "--tables-dir", parc, "--out-dir", out, *extra]


def test_make_labels_out_dir_whose_labels_is_the_input(parc, tmp_path, capsys):
    refused(make_labels(parc, parc), capsys, tmp_path, "--out-dir", "--labels-dir")
    (tmp_path / "alias").symlink_to(parc)  # the same folder through a symlink
    refused(make_labels(parc, tmp_path / "alias"), capsys, tmp_path, "--labels-dir")


def test_make_labels_out_dir_is_the_images_folder(parc, tmp_path, capsys):
    refused(make_labels(parc, parc / "t1"), capsys, tmp_path, "--out-dir", "--images-dir")


@pytest.fixture
def pet_labels(tmp_path, label_dirs):
    folder = tmp_path / "labels"
    shutil.copytree(label_dirs / "good", folder)
    (folder / "b.nii.gz").unlink()
    return folder


def test_simulate_pet_into_the_labels_folder(pet_labels, tmp_path, capsys):
    # The outputs are CASE_full.nii.gz etc.: beside the labels they collide only when a name matches.
    shutil.copy(pet_labels / "a.nii.gz", pet_labels / "x_full.nii.gz")
    refused(["simulate-pet", pet_labels / "x_full.nii.gz", "--case", "x", "--out-dir", pet_labels, "--physics",
             "image", *PET], capsys, tmp_path, "--out-dir", "LABELS", "same file")
    before = checksums(pet_labels)
    assert run_main(["simulate-pet", pet_labels / "a.nii.gz", "--out-dir", pet_labels, "--physics", "image", *PET],
                    capsys)[0] == 0
    after = checksums(pet_labels)
    assert {k: after[k] for k in before} == before and set(after) - set(before) == {
        "a_full.nii.gz", "a_low.nii.gz", "a_pet.json"}


@pytest.mark.parametrize("physics", ["image", "projection"])
def test_simulate_pet_dataset_into_the_labels_folder(physics, pet_labels, tmp_path, capsys):
    refused(["simulate-pet-dataset", "--labels-dir", pet_labels, "--out-dir", pet_labels, "--physics", physics,
             *(PET if physics == "image" else PET_FAST)], capsys, tmp_path, "--out-dir", "--labels-dir")


def write_config(tmp_path: Path, name: str, out_dir: Path) -> Path:
    manifest = make_pairs(tmp_path, n=2, size=8)
    cfg = tmp_path / name
    cfg.write_text(f"task: translation\ndata: {{manifest: {manifest}, crop_size: 8, val_fraction: 0}}\n"
                   "model: {backbone: {kind: unet, base_channels: 4, channel_mults: [1, 2], num_res_blocks: 1, "
                   "norm_groups: 2}}\n"
                   f"train: {{steps: 1, batch_size: 1, val_every: 0, ckpt_every: 1, log_every: 1, out_dir: '{out_dir}'}}\n"
                   "inference: {steps: 1}\n")
    return cfg


def test_train_into_the_folder_of_its_config_named_like_a_run_file(tmp_path, capsys):
    cfg = write_config(tmp_path, "config.yaml", tmp_path)
    refused(["train", cfg, "-o", tmp_path, "--overwrite"], capsys, tmp_path, "CONFIG", "same file")


def test_train_into_the_data_folder_is_allowed(tmp_path, capsys):
    # A run's files (last.pt, train_log.csv, config.yaml...) cannot collide with the data's names.
    cfg = write_config(tmp_path, "c.yaml", tmp_path)
    before = checksums(tmp_path)
    assert run_main(["train", cfg], capsys)[0] == 0
    after = checksums(tmp_path)
    assert {k: after[k] for k in before} == before and "last.pt" in after


def test_train_into_an_existing_run_without_resume(tmp_path, capsys):
    cfg = write_config(tmp_path, "c.yaml", tmp_path / "run")
    assert run_main(["train", cfg], capsys)[0] == 0
    refused(["train", cfg], capsys, tmp_path, "--resume", "--overwrite")


# ----------------------------------------------------------------------------- re-runs and earlier results
def test_single_file_outputs_need_overwrite(work, synthesis_model, capsys):
    out = work / "out.nii.gz"
    out.write_bytes(b"an earlier result")
    vol = work / "vol.nii.gz"
    refused(translate(work, "-i", vol, "-o", out), capsys, work, "out.nii.gz", "--overwrite")
    refused(["segment", "-m", work / "seg.pt", "-i", vol, "--preseg", work / "pre.nii.gz", "-o", out, "-k", "1"],
            capsys, work, "--overwrite")
    refused(["predict", "-m", work / "run", "-i", vol, "-o", out], capsys, work, "--overwrite")
    refused(["sample", "-m", synthesis_model, "-o", out], capsys, work, "--overwrite")
    refused(["evaluate", "--pred", vol, "--target", vol, "--out", out], capsys, work, "--overwrite")
    (work / "model.pt").write_bytes(b"an earlier export")
    refused(["export", work / "run", work / "model.pt"], capsys, work, "--overwrite")
    assert run_main(translate(work, "-i", vol, "-o", out, "--overwrite"), capsys)[0] == 0
    assert load_volume(out).shape == (16, 16, 16)
    assert run_main(["export", work / "run", work / "model.pt", "--overwrite"], capsys)[0] == 0


def test_a_failed_overwrite_keeps_the_earlier_outputs(work, capsys, monkeypatch):
    # --overwrite with two outputs: the second fails, so neither earlier file changes (staged writes).
    vol = work / "vol.nii.gz"
    out, unc = work / "out.nii.gz", work / "unc.nii.gz"
    assert run_main(translate(work, "-i", vol, "-n", "2", "-o", out, "-u", unc), capsys)[0] == 0
    import voxdiff.pipelines.pipeline as pipeline

    real = pipeline.save_volume

    def failing(vol_, path, **kw):
        if Path(path).name == "unc.nii.gz":
            from voxdiff.errors import VoxdiffError

            raise VoxdiffError(f"{path}: could not write (simulated failure); nothing was written")
        return real(vol_, path, **kw)

    monkeypatch.setattr(pipeline, "save_volume", failing)
    line = refused(translate(work, "-i", vol, "-n", "2", "-o", out, "-u", unc, "--overwrite", "--seed", "3"), capsys,
                   work, "unc.nii.gz")
    assert ".tmp" not in line


def test_folder_outputs_need_skip_existing_or_overwrite(work, capsys):
    out = work / "out"
    assert run_main(translate(work, "-i", work / "in", "-o", out), capsys)[0] == 0
    refused(translate(work, "-i", work / "in", "-o", out), capsys, work, "--skip-existing", "--overwrite")
    before = checksums(work)
    code, stdout, _ = run_main(translate(work, "-i", work / "in", "-o", out, "--skip-existing"), capsys)
    assert code == 0 and "2 skipped" in stdout and checksums(work) == before


def test_skip_existing_redoes_an_incomplete_output(work, capsys):
    out = work / "out"
    assert run_main(translate(work, "-i", work / "in", "-o", out), capsys)[0] == 0
    good = (out / "b.nii.gz").read_bytes()
    (out / "a.nii.gz").write_bytes((out / "a.nii.gz").read_bytes()[:60])  # cut short by a killed job
    code, stdout, _ = run_main(translate(work, "-i", work / "in", "-o", out, "--skip-existing"), capsys)
    assert code == 0 and "redoing the case" in stdout and "1 written, 1 skipped" in stdout, stdout
    assert load_volume(out / "a.nii.gz").shape == (16, 16, 16) and (out / "b.nii.gz").read_bytes() == good
    # The wrong grid is redone too.
    save_volume(np.zeros((8, 8, 8), np.float32), out / "b.nii.gz", affine=AFFINE)
    code, stdout, _ = run_main(translate(work, "-i", work / "in", "-o", out, "--skip-existing"), capsys)
    assert code == 0 and "b.nii.gz is not a complete volume" in stdout and load_volume(out / "b.nii.gz").shape == (16,) * 3


def test_dataset_builders_refuse_to_replace_earlier_results(parc, pet_labels, tmp_path, capsys):
    out = tmp_path / "seg"
    assert run_main(make_labels(parc, out), capsys)[0] == 0
    refused(make_labels(parc, out), capsys, tmp_path, "--overwrite")
    assert run_main(make_labels(parc, out, "--overwrite"), capsys)[0] == 0
    pet = tmp_path / "pet"
    assert run_main(["simulate-pet", pet_labels / "a.nii.gz", "--out-dir", pet, "--physics", "image", *PET],
                    capsys)[0] == 0
    refused(["simulate-pet", pet_labels / "a.nii.gz", "--out-dir", pet, "--physics", "image", *PET], capsys,
            tmp_path, "--overwrite")
    ds = tmp_path / "ds"
    assert run_main(["simulate-pet-dataset", "--labels-dir", pet_labels, "--out-dir", ds, "--physics", "image", *PET],
                    capsys)[0] == 0
    refused(["simulate-pet-dataset", "--labels-dir", pet_labels, "--out-dir", ds, "--physics", "image", *PET], capsys,
            tmp_path, "--overwrite")


def test_simulate_pet_dataset_rerun_with_a_bad_new_map_keeps_the_earlier_dataset(pet_labels, tmp_path, capsys):
    ds = tmp_path / "ds"
    args = ["simulate-pet-dataset", "--labels-dir", pet_labels, "--out-dir", ds, *PET_FAST]
    assert run_main(args, capsys)[0] == 0
    earlier = checksums(ds)
    (pet_labels / "b.nii.gz").write_text("not labels\n")  # a new, broken map
    line = assert_user_error(*run_main(args, capsys), "b.nii.gz")
    assert "1 of 2 subject(s) failed" in line
    after = checksums(ds)
    # Subject a's files and the manifest are as they were; dataset.json now lists b as missing.
    assert {k: v for k, v in after.items() if k != "dataset.json"} == {k: v for k, v in earlier.items()
                                                                       if k != "dataset.json"}
    rows = (ds / "manifest.csv").read_text().splitlines()
    assert len(rows) == 2 and rows[1].startswith("a,")
    assert temp_files(ds) == []
    # Another seed would replace subject a: refused without --overwrite.
    refused([*args, "--seed", "5"], capsys, tmp_path, "a_pet.json", "--overwrite")


def test_image_dataset_rerun_with_overwrite_and_a_bad_new_map_changes_nothing(pet_labels, tmp_path, capsys):
    ds = tmp_path / "ds"
    args = ["simulate-pet-dataset", "--labels-dir", pet_labels, "--out-dir", ds, "--physics", "image", *PET]
    assert run_main(args, capsys)[0] == 0
    (pet_labels / "b.nii.gz").write_text("not labels\n")
    refused([*args, "--overwrite"], capsys, tmp_path, "b.nii.gz")


def test_make_labels_keeps_completed_cases(parc, tmp_path, capsys):
    (parc / "labels" / "b.nii.gz").write_text("not labels\n")
    out = tmp_path / "seg"
    line = assert_user_error(*run_main(make_labels(parc, out), capsys), "b.nii.gz")
    assert "1 of 2 case(s) failed" in line
    assert sorted(p.name for p in (out / "labels").iterdir()) == ["a.nii.gz"]
    assert [r.split(",")[0] for r in (out / "manifest.csv").read_text().splitlines()] == ["case", "a"]


# ----------------------------------------------------------------------------- printed paths are not markup
def test_bracketed_paths_print_literally(work, parc, pet_labels, tmp_path, capsys):
    odd = tmp_path / "[test]"
    odd.mkdir()
    vol = work / "vol.nii.gz"
    code, out, _ = run_main(translate(work, "-i", vol, "-o", odd / "[bold]x.nii.gz"), capsys)
    assert code == 0 and str(odd / "[bold]x.nii.gz") in out, out
    code, out, _ = run_main(translate(work, "-i", work / "in", "-o", odd / "[red]f"), capsys)
    assert code == 0 and str(odd / "[red]f" / "a.nii.gz") in out, out
    code, out, _ = run_main(["segment", "-m", work / "seg.pt", "-i", vol, "--preseg", work / "pre.nii.gz", "-o",
                             odd / "[bold]seg.nii.gz", "-k", "1"], capsys)
    assert code == 0 and str(odd / "[bold]seg.nii.gz") in out, out
    code, out, _ = run_main(["simulate-pet", pet_labels / "a.nii.gz", "--case", "[b]a", "--out-dir", odd / "[i]pet",
                             "--physics", "image", *PET], capsys)
    assert code == 0 and str(odd / "[i]pet" / "[b]a_full.nii.gz") in out and "[b]a: low-dose" in out, out
    code, out, _ = run_main(["evaluate", "--pred", vol, "--target", vol, "--out", odd / "[bold]m.csv"], capsys)
    assert code == 0 and f"wrote {odd / '[bold]m.csv'}" in out, out
    code, out, _ = run_main(make_labels(parc, odd / "[bold]seg"), capsys)
    assert code == 0 and str(odd / "[bold]seg" / "manifest.csv") in out, out
    cfg = write_config(tmp_path, "c.yaml", odd / "[bold]run")
    code, out, _ = run_main(["train", cfg], capsys)
    assert code == 0 and str(odd / "[bold]run") in out, out
    # ... and in error messages.
    code, _, err = run_main(translate(work, "-i", odd / "[bold]missing.nii.gz", "-o", odd / "y.nii.gz"), capsys)
    assert_user_error(code, "", err, "[bold]missing.nii.gz")
