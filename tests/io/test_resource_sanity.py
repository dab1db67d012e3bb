"""Resource sanity: lying headers, voxel limits, absurd labels, bad affines, --device and --seed.

Each case goes through the CLI: exit 2, one line, no traceback, inputs byte-identical afterwards.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import re
import struct
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from tests.helpers import assert_user_error, run_main
from voxdiff.config import check_device, check_seed
from voxdiff.data.dataset import check_label_values
from voxdiff.errors import VoxdiffError
from voxdiff.io import load_volume, save_volume

AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])


@pytest.fixture(autouse=True)
def _wide_console(monkeypatch):
    monkeypatch.setenv("COLUMNS", "300")


def digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def _patch_nifti_header(src: Path, dst: Path, **fields) -> Path:
    """``src`` with header fields replaced (bypassing nibabel's own consistency checks)."""
    raw = bytearray(src.read_bytes())
    hdr = nib.Nifti1Header.from_fileobj(open(src, "rb"))
    for k, v in fields.items():
        hdr[k] = v
    raw[:348] = hdr.binaryblock
    dst.write_bytes(bytes(raw))
    return dst


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("lies")
    vol = np.random.default_rng(0).random((8, 8, 8)).astype(np.float32)
    base = save_volume(vol, d / "base.nii", affine=AFFINE)
    raw = bytearray(base.read_bytes())
    huge = bytearray(raw)
    huge[40:56] = struct.pack("<8h", 3, 30000, 30000, 30000, 1, 1, 1, 1)   # dim[]: 30000^3 voxels
    (d / "huge.nii").write_bytes(bytes(huge))
    (d / "huge.nii.gz").write_bytes(gzip.compress(bytes(huge)))
    big = bytearray(raw)
    big[40:56] = struct.pack("<8h", 3, 64, 64, 64, 1, 1, 1, 1)               # under the limit, but no data
    (d / "short.nii").write_bytes(bytes(big))
    (d / "short.nii.gz").write_bytes(gzip.compress(bytes(big)))
    _patch_nifti_header(base, d / "singular.nii", srow_x=[0, 0, 0, 0], srow_y=[0, 0, 0, 0], srow_z=[0, 0, 0, 0],
                        sform_code=1, qform_code=0)
    _patch_nifti_header(base, d / "nan_affine.nii", srow_x=[np.nan, 0, 0, 0], sform_code=1, qform_code=0)
    for ext, pattern, repl in ((".mha", rb"DimSize = 8 8 8", b"DimSize = 30000 30000 30000"),
                               (".nrrd", rb"sizes: 8 8 8", b"sizes: 30000 30000 30000")):
        p = save_volume(vol, d / f"small{ext}", affine=AFFINE)
        data = p.read_bytes()
        assert re.search(pattern, data), data[:300]
        (d / f"huge{ext}").write_bytes(re.sub(pattern, repl, data, count=1))
    hv = save_volume(vol, d / "small.hv", affine=AFFINE)
    text = hv.read_text()
    (d / "huge.hv").write_text(text.replace("small.v", "huge.v").replace(":= 8\n", ":= 30000\n"))
    (d / "huge.v").write_bytes((d / "small.v").read_bytes())
    (d / "huge_bz2.hv").write_text(text.replace("small.v", "huge_bz2.v").replace(":= 8\n", ":= 500\n"))  # 500^3: under the limit
    (d / "huge_bz2.v.bz2").write_bytes(bz2.compress(b"\0" * 1000))
    labels = np.zeros((8, 8, 8), np.float32)
    labels[2:6, 2:6, 2:6] = 1
    labels[0, 0, 0] = 1e11
    save_volume(labels, d / "labels_1e11.nii.gz", affine=AFFINE)
    names = ["huge.nii", "huge.nii.gz", "short.nii", "short.nii.gz", "singular.nii", "nan_affine.nii",
             "huge.mha", "huge.nrrd", "huge.hv", "huge_bz2.hv", "labels_1e11.nii.gz", "base.nii"]
    return {n: d / n for n in names}


#: File -> words of the error (beside its name).
LIES = {
    "huge.nii": ["30000x30000x30000", "VOXDIFF_MAX_VOXELS"],
    "huge.nii.gz": ["30000x30000x30000", "VOXDIFF_MAX_VOXELS"],
    "huge.mha": ["30000x30000x30000", "limit"],
    "huge.nrrd": ["30000x30000x30000", "limit"],
    "huge.hv": ["30000x30000x30000", "limit"],
    "short.nii": ["bytes", "truncated"],
    "short.nii.gz": ["bytes", "truncated"],
    "huge_bz2.hv": ["truncated"],
}


@pytest.mark.parametrize("name", sorted(LIES))
def test_lying_header_is_refused_before_allocation(name, files, capsys):
    before = digest(files[name].parent)
    line = assert_user_error(*run_main(["info", files[name]], capsys), Path(name).stem, *LIES[name])
    assert "MemoryError" not in line
    assert digest(files[name].parent) == before


def test_voxel_limit_comes_from_the_environment(files, monkeypatch, capsys):
    monkeypatch.setenv("VOXDIFF_MAX_VOXELS", "100")
    assert_user_error(*run_main(["info", files["base.nii"]], capsys), "8x8x8 = 512 voxels", "limit of 100")
    monkeypatch.setenv("VOXDIFF_MAX_VOXELS", "512")
    assert load_volume(files["base.nii"]).shape == (8, 8, 8)
    monkeypatch.setenv("VOXDIFF_MAX_VOXELS", "lots")
    assert_user_error(*run_main(["info", files["base.nii"]], capsys), "VOXDIFF_MAX_VOXELS", "'lots'")


@pytest.mark.parametrize("name, problem", [("singular.nii", "singular"), ("nan_affine.nii", "non-finite")])
def test_info_reports_a_bad_affine_and_commands_refuse_it(name, problem, files, capsys, tmp_path):
    code, out, err = run_main(["info", files[name]], capsys)
    assert code == 0 and "Traceback" not in out + err, err
    assert f"affine: {problem}" in out
    line = assert_user_error(*run_main(["evaluate", "--pred", files[name], "--target", files["base.nii"],
                                        "--out", tmp_path / "m.csv"], capsys), name)
    assert "affine" in line and ("singular" in line or "NaN" in line)
    assert not (tmp_path / "m.csv").exists()


def test_absurd_label_values_are_refused(files, capsys, tmp_path):
    vol = load_volume(files["labels_1e11.nii.gz"])
    with pytest.raises(VoxdiffError, match="label value 1e\\+11 is out of range"):
        check_label_values(vol, "labels")
    out = tmp_path / "pet"
    out.mkdir()
    before = digest(files["base.nii"].parent)
    assert_user_error(*run_main(["simulate-pet", files["labels_1e11.nii.gz"], "--out-dir", out, "--head", "none"],
                                capsys), "labels_1e11.nii.gz", "1e+11")
    assert not any(out.iterdir()) and digest(files["base.nii"].parent) == before
    ok = vol.with_array(np.where(vol.array > 1e6, 65535, vol.array))
    assert check_label_values(ok, "labels").max() == 65535


# ------------------------------------------------------------------------------- --device, --seed
@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("command", [["sample", "-m", "x.pt", "-o", "y.nii.gz"],
                                     ["translate", "-m", "x.pt", "-i", "a.nii.gz", "-o", "b.nii.gz"]])
@pytest.mark.parametrize("device", ["cuda", "cuda:7"])
def test_cuda_without_cuda_is_one_line(command, device, capsys, tmp_path):
    line = assert_user_error(*run_main(command + ["--device", device], capsys), f"--device {device}", "no CUDA")
    assert "use --device cpu" in line
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("device", ["gpu", "cuda:x", "cpu:1", "cuda0", ""])
def test_junk_device_is_one_line(device, capsys):
    assert_user_error(*run_main(["sample", "-m", "x.pt", "-o", "y.nii.gz", "--device", device], capsys),
                      "--device must be auto, cpu, cuda or cuda:N")


def test_missing_gpu_index(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(VoxdiffError, match=r"--device cuda:7: only 1 CUDA device\(s\) are visible \(cuda:0..cuda:0\)"):
        check_device("cuda:7")
    assert check_device("cuda:0") == "cuda:0" and check_device("CUDA") == "cuda"
    monkeypatch.setenv("LOCAL_RANK", "3")
    with pytest.raises(VoxdiffError, match="LOCAL_RANK 3"):
        check_device("cuda")


def test_train_device_is_checked(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    (tmp_path / "c.yaml").write_text(f"train: {{out_dir: {tmp_path / 'run'}}}\n")
    assert_user_error(*run_main(["train", tmp_path / "c.yaml", "--set", "train.device=cuda"], capsys),
                      "train.device cuda", "no CUDA", "set train.device to cpu")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("command", [["sample", "-m", "x.pt", "-o", "y.nii.gz"],
                                     ["translate", "-m", "x.pt", "-i", "a.nii.gz", "-o", "b.nii.gz"],
                                     ["segment", "-m", "x.pt", "-i", "a.nii.gz", "-o", "b.nii.gz"],
                                     ["simulate-pet", "labels.nii.gz", "-o", "out"]])
@pytest.mark.parametrize("seed", ["99999999999999999999999", "4294967296", "-1"])
def test_huge_or_negative_seed_is_one_line(command, seed, capsys, tmp_path):
    assert_user_error(*run_main(command + ["--seed", seed], capsys), "--seed must be an integer in 0..4294967295")


def test_check_seed_bounds():
    assert check_seed(0) == 0 and check_seed(2**32 - 1) == 2**32 - 1 and check_seed(np.int64(5)) == 5
    for bad in (2**32, -1, True, 1.0, "1"):
        with pytest.raises(VoxdiffError, match="--seed"):
            check_seed(bad)
    # The largest seed works everywhere the trainer and the samplers use it.
    torch.Generator().manual_seed((2**32 - 1) * 1_000_003 + 10**9)
    np.random.seed((2**32 - 1) % 2**32)
