"""Inference over folders of cases, sharded with --part-id/--num-parts or torchrun."""

from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pytest

from tests.helpers import cli_exit_code, free_port, make_cases, make_pairs, subprocess_env, tiny_config, train_tiny
from voxdiff.cases import Part, list_cases, plan_cases, resolve_part
from voxdiff.errors import VoxdiffError
from voxdiff.io import load_volume


# ------------------------------------------------------------------------------------------ units
def test_parts_are_disjoint_and_cover_every_case():
    items = list(range(11))
    parts = [Part(i, 4).select(items) for i in range(4)]
    assert sorted(sum(parts, [])) == items
    assert [len(p) for p in parts] == [3, 3, 3, 2]


def test_resolve_part_explicit_torchrun_and_errors(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert (resolve_part(None, None).index, resolve_part(None, None).count) == (0, 1)
    assert (resolve_part(2, 3).index, resolve_part(2, 3).count) == (2, 3)
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    p = resolve_part(None, None)
    assert (p.index, p.count, p.source) == (3, 4, "torchrun")
    assert resolve_part(0, 1).count == 1, "explicit parts win over torchrun's"
    for args, msg in [((1, None), "together"), ((3, 3), "0..2"), ((-1, 2), "0..1"), ((0, 0), ">= 1")]:
        with pytest.raises(VoxdiffError, match=msg):
            resolve_part(*args)


def test_list_and_plan_cases(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    for name in ("b.nii.gz", "a.nii.gz", "c.mha"):
        (d / name).write_bytes(b"x")
    (d / ".a.nii.gz.tmp.nii.gz").write_bytes(b"x")   # a temporary file of an atomic write
    (d / "notes.txt").write_text("not a volume")
    assert [p.name for p in list_cases(d)] == ["a.nii.gz", "b.nii.gz", "c.mha"]
    jobs, folder = plan_cases(d, {"output": tmp_path / "out", "probs": tmp_path / "p", "uncertainty": None},
                              output_suffix={"probs": ".nii.gz"})
    assert folder and [j.name for j in jobs] == ["a", "b", "c"]
    assert jobs[2].outputs == {"output": tmp_path / "out" / "c.mha", "probs": tmp_path / "p" / "c.nii.gz"}
    with pytest.raises(VoxdiffError, match="must be a folder"):
        plan_cases(d, {"output": tmp_path / "seg.nii.gz"})
    with pytest.raises(VoxdiffError, match="differ from the input folder"):
        plan_cases(d, {"output": d})
    with pytest.raises(VoxdiffError, match="own folder"):
        plan_cases(d, {"output": tmp_path / "o", "uncertainty": tmp_path / "o"})
    (d / "a.nii").write_bytes(b"x")
    with pytest.raises(VoxdiffError, match="appears twice"):
        list_cases(d)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(VoxdiffError, match="no volume files"):
        list_cases(empty)
    with pytest.raises(VoxdiffError, match="no such file"):
        plan_cases(tmp_path / "missing", {"output": tmp_path / "o"})


# ------------------------------------------------------------------------------ real CLI runs
@pytest.fixture(scope="module")
def seg_cases(tmp_path_factory):
    """A tiny PD-DDPM model, 5 images in a folder and their pre-segmentations in another."""
    root = tmp_path_factory.mktemp("cases")
    manifest = make_cases(root, n=5)
    seg = train_tiny(
        root, manifest, "segmentation",
        "{num_classes: 3, process: {kind: ddpm, num_train_timesteps: 50, prediction_type: epsilon}, "
        "backbone: {kind: unet, base_channels: 4, channel_mults: [1, 2], num_res_blocks: 1, norm_groups: 2}}")
    (root / "images").mkdir()
    (root / "preseg").mkdir()
    for i in range(5):
        shutil.copy(root / f"c{i}_img.nii.gz", root / "images" / f"case{i}.nii.gz")
        shutil.copy(root / f"c{i}_lab.nii.gz", root / "preseg" / f"case{i}.nii.gz")
    return root, seg


def _seg_args(root, seg, out, *extra):
    return ["segment", "-m", seg, "-i", root / "images", "-o", out, "--preseg", root / "preseg",
            "-t", 10, "-k", 2, "-n", 2, "-u", f"{out}_unc", "--seed", 3, *extra]


def test_segment_folder_in_two_parts_equals_one_process(seg_cases, tmp_path):
    root, seg = seg_cases
    assert cli_exit_code(_seg_args(root, seg, tmp_path / "ref")) == 0
    ref = sorted(p.name for p in (tmp_path / "ref").iterdir())
    assert ref == [f"case{i}.nii.gz" for i in range(5)]
    for part in (0, 1):
        assert cli_exit_code(_seg_args(root, seg, tmp_path / "sharded", "--part-id", part, "--num-parts", 2)) == 0
        if part == 0:  # part 0 of 2 runs cases 0, 2, 4 only
            assert sorted(p.name for p in (tmp_path / "sharded").iterdir()) == ["case0.nii.gz", "case2.nii.gz",
                                                                                "case4.nii.gz"]
    assert sorted(p.name for p in (tmp_path / "sharded").iterdir()) == ref
    for name in ref:
        a, b = load_volume(tmp_path / "ref" / name), load_volume(tmp_path / "sharded" / name)
        assert np.array_equal(a.array, b.array) and np.allclose(a.affine, b.affine)
        ua, ub = load_volume(tmp_path / "ref_unc" / name), load_volume(tmp_path / "sharded_unc" / name)
        assert np.array_equal(ua.array, ub.array)
        assert np.allclose(a.affine, load_volume(root / "images" / name).affine)


def test_a_bad_case_fails_alone_and_skip_existing_resumes(seg_cases, tmp_path, capsys):
    root, seg = seg_cases
    imgs = tmp_path / "images"
    shutil.copytree(root / "images", imgs)
    (imgs / "case1.nii.gz").write_bytes(b"\x1f\x8b truncated")
    pre = root / "preseg"
    argv = ["segment", "-m", seg, "-i", imgs, "-o", tmp_path / "out", "--preseg", pre, "-t", 10, "-k", 1]
    capsys.readouterr()
    assert cli_exit_code(argv) == 2
    err = capsys.readouterr().err
    assert "1 of 5 case(s) failed" in err and "case1" in err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [f"case{i}.nii.gz" for i in (0, 2, 3, 4)]
    # Resume: the four written cases are skipped (their files untouched), the repaired one runs.
    shutil.copy(root / "images" / "case1.nii.gz", imgs / "case1.nii.gz")
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "out").iterdir()}
    assert cli_exit_code(argv + ["--skip-existing"]) == 0
    out = capsys.readouterr().out
    assert out.count("skipped") >= 4 and "1 written, 4 skipped, 0 failed" in " ".join(out.split())
    after = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "out").iterdir()}
    assert all(after[k] == v for k, v in before.items()) and "case1.nii.gz" in after


def test_folder_option_errors_exit_2_before_any_model_runs(seg_cases, tmp_path, capsys):
    root, seg = seg_cases
    cases = [
        (["-o", tmp_path / "seg.nii.gz", "--preseg", root / "preseg"], "must be a folder"),
        (["-o", tmp_path / "o", "--preseg", root / "preseg" / "case0.nii.gz"], "--preseg must be a folder"),
        (["-o", tmp_path / "o", "--preseg", root / "preseg", "--part-id", 2, "--num-parts", 2], "--part-id"),
        (["-o", tmp_path / "o", "--preseg", root / "preseg", "--mode", "vanilla"], "--mode vanilla"),
    ]
    for extra, msg in cases:
        assert cli_exit_code(["segment", "-m", seg, "-i", root / "images", *extra]) == 2
        assert msg in capsys.readouterr().err
    assert not (tmp_path / "o").exists() and not (tmp_path / "seg.nii.gz").exists()
    # A missing per-case pre-segmentation fails that case by name.
    partial = tmp_path / "pre"
    shutil.copytree(root / "preseg", partial)
    (partial / "case3.nii.gz").unlink()
    assert cli_exit_code(["segment", "-m", seg, "-i", root / "images", "-o", tmp_path / "o", "--preseg", partial,
                          "-t", 5, "-k", 1]) == 2
    assert "case3" in capsys.readouterr().err
    assert not (tmp_path / "o" / "case3.nii.gz").exists() and (tmp_path / "o" / "case4.nii.gz").exists()


def test_translate_folder_sharded_by_torchrun(tmp_path):
    from voxdiff.train.trainer import Trainer

    manifest = make_pairs(tmp_path, n=4)
    Trainer(tiny_config(tmp_path, manifest), quiet=True).fit()
    src = tmp_path / "sources"
    src.mkdir()
    for i in range(4):
        shutil.copy(tmp_path / f"c{i}_src.nii.gz", src / f"s{i}.nii.gz")
    ckpt = tmp_path / "run" / "last.pt"
    assert cli_exit_code(["translate", "-m", ckpt, "-i", src, "-o", tmp_path / "one", "-k", 2]) == 0
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
                          "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
                          "-m", "voxdiff", "translate", "-m", str(ckpt), "-i", str(src), "-o", str(tmp_path / "two"),
                          "-k", "2"], env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "part 1/2 (torchrun)" in res.stdout and "part 2/2 (torchrun)" in res.stdout
    assert "2 written" in res.stdout
    names = sorted(p.name for p in (tmp_path / "one").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "two").iterdir()) == [f"s{i}.nii.gz" for i in range(4)]
    for n in names:
        a, b = load_volume(tmp_path / "one" / n), load_volume(tmp_path / "two" / n)
        assert np.allclose(a.array, b.array, atol=1e-5) and np.allclose(a.affine, b.affine)
    # One file in, one file out, as before.
    assert cli_exit_code(["translate", "-m", ckpt, "-i", src / "s0.nii.gz", "-o", tmp_path / "s0.nii.gz", "-k", 2]) == 0
    assert np.allclose(load_volume(tmp_path / "s0.nii.gz").array, load_volume(tmp_path / "one" / "s0.nii.gz").array)
