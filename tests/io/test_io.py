"""Volume I/O: exact round trips in every format, atomic writes, and a clear error for every bad input."""

from __future__ import annotations

import bz2
import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from voxdiff.errors import VoxdiffError
from voxdiff.io import Volume, atomic_path, check_same_geometry, load_volume, save_volume


def _array(shape=(6, 7, 8), seed=0) -> np.ndarray:
    return np.random.default_rng(seed).normal(100.0, 30.0, shape).astype(np.float32)


def _oblique_affine() -> np.ndarray:
    th = 0.3
    rot = np.array([[np.cos(th), -np.sin(th), 0.0], [np.sin(th), np.cos(th), 0.0], [0.0, 0.0, 1.0]])
    aff = np.eye(4)
    aff[:3, :3] = rot @ np.diag([1.5, 2.0, 2.5])
    aff[:3, 3] = [10.25, -20.5, 5.125]
    return aff


def _permuted_affine() -> np.ndarray:
    """Axis permutation + flips + anisotropic spacing + offset, all exact in float32."""
    return np.array([[0.0, -2.0, 0.0, 10.0], [1.5, 0.0, 0.0, -20.5], [0.0, 0.0, -2.5, 5.125], [0.0, 0.0, 0.0, 1.0]])


def _only(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


# --- round trips -------------------------------------------------------------------------------

@pytest.mark.parametrize("ext", [".nii", ".nii.gz", ".mha", ".nrrd"])
@pytest.mark.parametrize("affine_kind", ["diagonal", "permuted"])
def test_round_trip_is_exact(tmp_path, tiny_affine, ext, affine_kind):
    aff = tiny_affine if affine_kind == "diagonal" else _permuted_affine()
    arr = _array()
    path = save_volume(arr, tmp_path / f"vol{ext}", affine=aff)
    vol = load_volume(path)
    assert vol.array.dtype == np.float32
    np.testing.assert_array_equal(vol.array, arr)
    np.testing.assert_array_equal(vol.affine, aff)
    assert sorted(vol.spacing) == pytest.approx([1.5, 2.0, 2.5])
    assert _only(tmp_path) == {f"vol{ext}"}  # no temporary file left behind


@pytest.mark.parametrize("ext,data_file", [(".mhd", "vol.zraw"), (".nhdr", "vol.raw.gz")])
def test_detached_header_round_trip_names_its_data_file_after_the_output(tmp_path, tiny_affine, ext, data_file):
    # The data file is written beside a temporary header, then both are moved: the header must not
    # point at a temporary name, and no temporary file may remain.
    arr = _array()
    vol = load_volume(save_volume(arr, tmp_path / f"vol{ext}", affine=tiny_affine))
    np.testing.assert_array_equal(vol.array, arr)
    assert _only(tmp_path) == {f"vol{ext}", data_file}
    assert data_file in (tmp_path / f"vol{ext}").read_text(errors="replace")


@pytest.mark.parametrize("ext", [".nii.gz", ".mha", ".nrrd"])
def test_oblique_affine_round_trip(tmp_path, ext):
    aff = _oblique_affine()
    arr = _array()
    vol = load_volume(save_volume(arr, tmp_path / f"obl{ext}", affine=aff))
    np.testing.assert_array_equal(vol.array, arr)
    # NIfTI stores the sform in float32; MHA/NRRD keep (nearly) full precision.
    np.testing.assert_allclose(vol.affine, aff, rtol=0, atol=1e-6 if ext == ".nii.gz" else 1e-12)


def test_integer_dtype_and_orientation_round_trip(tmp_path, tiny_affine):
    labels = np.random.default_rng(1).integers(0, 5, (5, 6, 7)).astype(np.float32)
    vol = load_volume(save_volume(labels, tmp_path / "lab.nii.gz", affine=tiny_affine, dtype=np.uint8))
    assert vol.disk_dtype == np.uint8
    np.testing.assert_array_equal(vol.array, labels)
    assert vol.orientation == "LAS"


def test_interfile_round_trip_including_bz2(tmp_path):
    aff = np.diag([2.0, 1.0, 6.75, 1.0])
    aff[:3, 3] = [-105.0, -105.0, 3.5]
    arr = np.random.default_rng(2).integers(-300, 300, (5, 6, 7)).astype(np.int16)
    save_volume(arr.astype(np.float32), tmp_path / "img.hv", affine=aff, dtype=np.int16)
    assert _only(tmp_path) == {"img.hv", "img.v"}
    vol = load_volume(tmp_path / "img.hv")
    assert vol.disk_dtype == np.int16
    np.testing.assert_array_equal(vol.array, arr)
    np.testing.assert_array_equal(vol.affine, aff)
    # The same data bzip2'd beside the header (as BrainWeb ships it) reads the same.
    raw = (tmp_path / "img.v").read_bytes()
    (tmp_path / "img.v.bz2").write_bytes(bz2.compress(raw))
    (tmp_path / "img.v").unlink()
    np.testing.assert_array_equal(load_volume(tmp_path / "img.hv").array, arr)


def test_interfile_refuses_a_rotated_affine(tmp_path):
    with pytest.raises(VoxdiffError, match="rot.hv"):
        save_volume(_array(), tmp_path / "rot.hv", affine=_oblique_affine())
    assert _only(tmp_path) == set()


def _scaled_uint8(tmp_path: Path, affine: np.ndarray) -> tuple[Path, np.ndarray]:
    raw = np.random.default_rng(3).integers(0, 256, (6, 7, 8)).astype(np.uint8)
    img = nib.Nifti1Image(raw, affine)
    img.header.set_data_dtype(np.uint8)
    img.header.set_slope_inter(13.5, -20.0)
    path = tmp_path / "scaled.nii.gz"
    nib.save(img, str(path))
    return path, raw


def test_dtype_like_round_trip_of_scaled_uint8(tmp_path, tiny_affine):
    path, raw = _scaled_uint8(tmp_path, tiny_affine)
    vol = load_volume(path)
    assert vol.disk_dtype == np.uint8 and vol.disk_scaling == (13.5, -20.0)
    np.testing.assert_array_equal(vol.array, (raw * 13.5 - 20.0).astype(np.float32))
    out = save_volume(vol, tmp_path / "copy.nii.gz", dtype="like")
    back = nib.load(str(out))
    assert back.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(np.asarray(back.dataobj.get_unscaled()), raw)
    assert (float(back.dataobj.slope), float(back.dataobj.inter)) == (13.5, -20.0)
    again = load_volume(out)
    np.testing.assert_array_equal(again.array, vol.array)
    np.testing.assert_array_equal(again.affine, vol.affine)
    # New values written "like" the input land on its stored grid (rounded), not float32.
    shifted = load_volume(save_volume(vol.with_array(vol.array + 13.5), tmp_path / "s.nii.gz", dtype="like"))
    expected = (np.clip(raw.astype(int) + 1, 0, 255) * 13.5 - 20.0).astype(np.float32)
    np.testing.assert_array_equal(shifted.array, expected)


def test_save_like_reuses_geometry(tmp_path, tiny_affine):
    ref = load_volume(save_volume(_array(), tmp_path / "ref.nii.gz", affine=tiny_affine))
    out = load_volume(save_volume(np.zeros(ref.shape), tmp_path / "out.mha", like=ref))
    np.testing.assert_array_equal(out.affine, tiny_affine)
    with pytest.raises(VoxdiffError, match="bad.nii.gz"):
        save_volume(np.zeros((2, 2, 2)), tmp_path / "bad.nii.gz", like=ref)
    assert "bad.nii.gz" not in _only(tmp_path)


# --- atomic writes -----------------------------------------------------------------------------

def test_atomic_path_failure_leaves_no_file_and_keeps_the_old_one(tmp_path):
    target = tmp_path / "out.nii.gz"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"partial")
            raise RuntimeError("crash mid-write")
    assert _only(tmp_path) == set()
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"partial")
            raise RuntimeError("crash mid-write")
    assert target.read_bytes() == b"old" and _only(tmp_path) == {"out.nii.gz"}


def test_save_into_a_missing_folder_is_a_clear_error(tmp_path):
    path = tmp_path / "nope" / "v.nii.gz"
    with pytest.raises(VoxdiffError, match="does not exist") as exc:
        save_volume(_array(), path, affine=np.eye(4))
    assert str(path) in str(exc.value)


def test_save_failure_inside_the_writer_leaves_nothing(tmp_path, monkeypatch):
    import nibabel

    def boom(img, filename):
        Path(filename).write_bytes(b"half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(nibabel, "save", boom)
    with pytest.raises(VoxdiffError, match="no space left"):
        save_volume(_array(), tmp_path / "v.nii.gz", affine=np.eye(4))
    assert _only(tmp_path) == set()


# --- bad inputs: one VoxdiffError naming the file ------------------------------------------------

def _make_bad(tmp_path: Path, kind: str) -> Path:
    ok = save_volume(_array(), tmp_path / "ok.nii.gz", affine=np.eye(4))
    if kind == "missing":
        return tmp_path / "missing.nii.gz"
    if kind == "folder":
        (tmp_path / "dir.nii.gz").mkdir()
        return tmp_path / "dir.nii.gz"
    if kind == "unknown_ext":
        p = tmp_path / "volume.txt"
        p.write_text("1 2 3\n")
        return p
    if kind == "truncated_gzip":
        p = tmp_path / "trunc.nii.gz"
        data = ok.read_bytes()
        p.write_bytes(data[: len(data) // 2])
        return p
    if kind == "corrupt_gzip":
        p = tmp_path / "corrupt.nii.gz"
        data = bytearray(ok.read_bytes())
        data[len(data) // 2: len(data) // 2 + 64] = b"\x00" * 64
        p.write_bytes(bytes(data))
        return p
    if kind == "text_nii_gz":
        p = tmp_path / "notes.nii.gz"
        p.write_text("this is not a volume\n")
        return p
    if kind == "gzipped_text":
        p = tmp_path / "gztext.nii.gz"
        p.write_bytes(gzip.compress(b"this is not a volume\n" * 50))
        return p
    if kind == "empty_file":
        p = tmp_path / "empty.nii"
        p.write_bytes(b"")
        return p
    if kind == "truncated_nii":
        p = tmp_path / "trunc.nii"
        save_volume(_array(), p, affine=np.eye(4))
        p.write_bytes(p.read_bytes()[:400])
        return p
    if kind == "truncated_mha":
        p = tmp_path / "trunc.mha"
        save_volume(_array(), p, affine=np.eye(4))
        p.write_bytes(p.read_bytes()[:-200])
        return p
    if kind == "text_mha":
        p = tmp_path / "text.mha"
        p.write_text("hello\n")
        return p
    if kind == "2d":
        p = tmp_path / "flat.nii.gz"
        nib.save(nib.Nifti1Image(np.zeros((8, 9), np.float32), np.eye(4)), str(p))
        return p
    if kind == "4d":
        p = tmp_path / "series.nii.gz"
        nib.save(nib.Nifti1Image(np.zeros((4, 5, 6, 2), np.float32), np.eye(4)), str(p))
        return p
    if kind in ("nan", "inf"):
        arr = _array()
        arr[1, 2, 3] = np.nan if kind == "nan" else np.inf
        p = tmp_path / f"{kind}.nii.gz"
        nib.save(nib.Nifti1Image(arr, np.eye(4)), str(p))
        return p
    if kind == "interfile_no_data":
        p = tmp_path / "nodata.hv"
        save_volume(_array(), p, affine=np.eye(4))
        (tmp_path / "nodata.v").unlink()
        return p
    if kind == "interfile_truncated":
        p = tmp_path / "short.hv"
        save_volume(_array(), p, affine=np.eye(4))
        (tmp_path / "short.v").write_bytes(b"\x00" * 10)
        return p
    if kind == "interfile_not_header":
        p = tmp_path / "plain.hv"
        p.write_text("just text\n")
        return p
    if kind == "interfile_bad_bz2":
        p = tmp_path / "badbz.hv"
        save_volume(_array(), p, affine=np.eye(4))
        (tmp_path / "badbz.v").unlink()
        (tmp_path / "badbz.v.bz2").write_bytes(b"BZh9 definitely not bzip2")
        return p
    raise AssertionError(kind)


BAD_KINDS = ["missing", "folder", "unknown_ext", "truncated_gzip", "corrupt_gzip", "text_nii_gz", "gzipped_text",
             "empty_file", "truncated_nii", "truncated_mha", "text_mha", "2d", "4d", "nan", "inf",
             "interfile_no_data", "interfile_truncated", "interfile_not_header", "interfile_bad_bz2"]


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_bad_input_gives_one_line_error_naming_the_file(tmp_path, kind):
    path = _make_bad(tmp_path, kind)
    with pytest.raises(VoxdiffError) as exc:
        load_volume(path, role="source")
    message = str(exc.value)
    # Interfile data errors name the data file beside the header (e.g. short.v for short.hv).
    assert path.name in message or (path.suffix == ".hv" and path.stem + ".v" in message), message
    assert "\n" not in message, message


@pytest.mark.parametrize("kind,needle", [("2d", "2D"), ("4d", "4D"), ("nan", "NaN"), ("inf", "NaN/Inf"),
                                         ("missing", "not found"), ("unknown_ext", "unknown volume extension"),
                                         ("truncated_gzip", "NIfTI"), ("text_nii_gz", "NIfTI")])
def test_bad_input_messages_say_what_is_wrong(tmp_path, kind, needle):
    path = _make_bad(tmp_path, kind)
    with pytest.raises(VoxdiffError, match=needle):
        load_volume(path)


def test_trailing_singleton_axis_and_nonfinite_opt_in(tmp_path):
    p = tmp_path / "single.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((4, 5, 6, 1), np.float32), np.eye(4)), str(p))
    assert load_volume(p).shape == (4, 5, 6)
    nan = _make_bad(tmp_path, "nan")
    assert np.isnan(load_volume(nan, allow_nonfinite=True).array).sum() == 1
    flat = _make_bad(tmp_path, "2d")
    assert load_volume(flat, require_3d=False).shape == (8, 9)


def test_check_same_geometry(tmp_path, tiny_affine):
    a = load_volume(save_volume(_array(), tmp_path / "a.nii.gz", affine=tiny_affine))
    check_same_geometry(a, load_volume(save_volume(_array(seed=1), tmp_path / "same.mha", affine=tiny_affine)))
    other_shape = load_volume(save_volume(_array((6, 7, 9)), tmp_path / "shape.nii.gz", affine=tiny_affine))
    with pytest.raises(VoxdiffError, match="shape") as exc:
        check_same_geometry(a, other_shape, what="case x")
    assert "shape.nii.gz" in str(exc.value) and "a.nii.gz" in str(exc.value) and str(exc.value).startswith("case x")
    moved = tiny_affine.copy()
    moved[0, 3] += 1.0
    other_aff = load_volume(save_volume(_array(), tmp_path / "moved.nii.gz", affine=moved))
    with pytest.raises(VoxdiffError, match="affine") as exc:
        check_same_geometry(a, other_aff)
    assert "moved.nii.gz" in str(exc.value)
    # Within tolerance is the same geometry (resampling tools leave float noise).
    nudged = Volume(array=a.array, affine=tiny_affine + 1e-5, path=tmp_path / "n.nii.gz")
    check_same_geometry(a, nudged)


# --- real data (skipped when ../shared/data is absent) -------------------------------------------

def _assert_nifti_round_trips(vol: Volume, tmp_path: Path) -> None:
    # Uncompressed .nii keeps these whole-volume tests fast; .nii.gz is covered on tiny volumes.
    for dtype in (None, "like"):
        out = save_volume(vol, tmp_path / f"rt_{dtype}.nii", dtype=dtype)
        back = load_volume(out)
        np.testing.assert_array_equal(back.array, vol.array)
        np.testing.assert_array_equal(back.affine, vol.affine)
        expected = vol.disk_dtype if dtype == "like" else np.float32
        assert back.disk_dtype == expected


@pytest.mark.integration
def test_ixi_subject(shared_data, tmp_path):
    folder = shared_data / "ixi-t1-2mm"
    t1_path = sorted((folder / "t1").glob("*.nii.gz"))[0]
    t1 = load_volume(t1_path)
    labels = load_volume(folder / "labels" / t1_path.name)
    assert t1.shape == labels.shape == (120, 120, 90)
    assert t1.spacing == pytest.approx((2.0, 2.0, 2.0))
    check_same_geometry(t1, labels)
    assert t1.disk_dtype == np.uint8 and t1.disk_scaling[0] != 1.0  # scaled uint8
    assert 1000 < t1.array.max() < 6000
    assert np.array_equal(labels.array, np.rint(labels.array)) and len(np.unique(labels.array)) > 100
    _assert_nifti_round_trips(t1, tmp_path)
    _assert_nifti_round_trips(labels, tmp_path)


@pytest.mark.integration
def test_glioma_case(shared_data, tmp_path):
    case = sorted((shared_data / "brain-tumour-mri").glob("TCGA-*"))[0]
    vols = {name: load_volume(case / f"{name}.nii.gz", role=name) for name in ("t1", "t1c", "t2", "flair", "tumour_label_fused")}
    for name, vol in vols.items():
        assert vol.shape == (240, 240, 155), name
        check_same_geometry(vols["t1"], vol, what=name)
    assert set(np.unique(vols["tumour_label_fused"].array)) <= {0.0, 1.0, 2.0, 4.0}
    _assert_nifti_round_trips(vols["t1"], tmp_path)


@pytest.mark.integration
def test_brainweb_interfile(shared_data, tmp_path):
    phantom = load_volume(shared_data / "brainweb" / "phantom_1.0mm_normal_crisp.hv")
    assert phantom.shape == (181, 217, 181) and phantom.disk_dtype == np.uint8
    assert set(np.unique(phantom.array)) == set(range(10))
    _assert_nifti_round_trips(phantom, tmp_path)
    back = load_volume(save_volume(phantom, tmp_path / "phantom.hv", dtype="like"))
    np.testing.assert_array_equal(back.array, phantom.array)
    np.testing.assert_array_equal(back.affine, phantom.affine)

    emission = load_volume(shared_data / "brainweb" / "emission.hv")
    assert emission.disk_dtype == np.float32
    assert sorted(emission.shape) == [15, 211, 211]
    assert sorted(emission.spacing) == pytest.approx([1.0, 1.0, 6.75])
    assert emission.array.max() > 0
    _assert_nifti_round_trips(emission, tmp_path)
