"""Volume I/O that keeps geometry: NIfTI (nibabel), MHA/NRRD (SimpleITK), Interfile, DICOM series.

A :class:`Volume` carries its array (always ``float32``, axes in file voxel order), its
4x4 voxel-to-world affine (RAS+, millimetres, as nibabel defines it) and, for NIfTI, the
original header so that outputs are written in the input's geometry. A DICOM series folder
is read and written by :mod:`voxdiff.io.dicom` (units and the source series in ``meta``).
"""

from __future__ import annotations

import errno
import gzip
import os
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from voxdiff.errors import VoxdiffError
from voxdiff.io.atomic import (atomic_file_set, atomic_path, atomic_write_bytes, atomic_write_text,
                               check_writable_dir, full_suffix)
from voxdiff.io.dicom import file_series_uid as _dicom_series_uid
from voxdiff.io.dicom import is_dicom_file as _is_dicom_file

__all__ = [
    "Volume",
    "load_volume",
    "volume_shape",
    "save_volume",
    "volume_format",
    "check_same_geometry",
    "atomic_path",
    "atomic_write_text",
    "atomic_write_bytes",
    "check_writable_dir",
    "SUPPORTED_SUFFIXES",
]

NIFTI_SUFFIXES = (".nii", ".nii.gz")
ITK_SUFFIXES = (".mha", ".mhd", ".nrrd", ".nhdr")
INTERFILE_SUFFIXES = (".hv",)
SUPPORTED_SUFFIXES = NIFTI_SUFFIXES + ITK_SUFFIXES + INTERFILE_SUFFIXES


@dataclass
class Volume:
    """A 3D image with its geometry.

    ``array`` is float32 with shape (X, Y, Z) in the file's voxel order; ``affine`` maps
    voxel indices to RAS+ world millimetres. ``header`` is the source NIfTI header (or None)
    and ``disk_dtype`` the dtype the file stored, used when writing "like" this volume.
    """

    array: np.ndarray
    affine: np.ndarray
    path: Path | None = None
    header: Any = field(default=None, repr=False)
    disk_dtype: np.dtype | None = None
    disk_scaling: tuple[float, float] = (1.0, 0.0)
    #: Format-specific facts, e.g. for DICOM ``units``, ``suv_factor``, ``dicom_reference``
    #: (see :func:`voxdiff.io.dicom.read_dicom_series`); empty for other formats.
    meta: dict = field(default_factory=dict, repr=False)

    @property
    def shape(self) -> tuple[int, ...]:
        """Array shape (X, Y, Z)."""
        return tuple(self.array.shape)

    @property
    def spacing(self) -> tuple[float, ...]:
        """Voxel size in mm along each array axis (column norms of the affine)."""
        return tuple(float(s) for s in np.sqrt((self.affine[:3, :3] ** 2).sum(axis=0)))

    @property
    def orientation(self) -> str:
        """Axis codes such as ``RAS`` or ``LPS`` (nibabel's convention); ``affine: singular`` (or
        ``non-finite``) for an affine without an orientation (``voxdiff info`` reports such files)."""
        import nibabel as nib

        from voxdiff.io.limits import affine_problem

        problem = affine_problem(self.affine)
        return f"affine: {problem}" if problem else "".join(nib.aff2axcodes(self.affine))

    def with_array(self, array: np.ndarray) -> "Volume":
        """A new volume with the same geometry and header, holding ``array``."""
        array = np.asarray(array)
        if array.shape[:3] != self.array.shape[:3]:
            raise ValueError(f"shape {array.shape} does not match the volume's {self.array.shape}")
        return Volume(array=array, affine=self.affine.copy(), path=None, header=self.header,
                      disk_dtype=self.disk_dtype, disk_scaling=self.disk_scaling, meta=dict(self.meta))


def volume_format(path: str | Path) -> str:
    """Return ``nifti``, ``itk`` or ``interfile`` for a path, or raise a clear error."""
    path = Path(path)
    suffix = full_suffix(path).lower()
    if suffix in NIFTI_SUFFIXES:
        return "nifti"
    if suffix in ITK_SUFFIXES:
        return "itk"
    if suffix in INTERFILE_SUFFIXES:
        return "interfile"
    raise VoxdiffError(
        f"{path}: unknown volume extension '{suffix or path.name}' "
        f"(supported: {', '.join(SUPPORTED_SUFFIXES)})"
    )


def _sitk():
    try:
        import SimpleITK as sitk
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise VoxdiffError(
            "reading or writing MHA/NRRD needs SimpleITK: pip install 'voxdiff[itk]'"
        ) from exc
    return sitk


_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _one_line(exc: BaseException) -> str:
    """A library's exception text on one line (error messages must be single lines)."""
    return " ".join(str(exc).split())


def _check_gzip(path: Path) -> int:
    """Read a gzip file to its end so that its CRC is verified; returns the uncompressed size.

    nibabel stops reading once it has the voxels it needs, so a corrupted (not truncated)
    stream would otherwise load as silently wrong data.
    """
    size = 0
    with gzip.open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            size += len(chunk)
    return size


def _read_nifti(path: Path) -> tuple[np.ndarray, np.ndarray, Any, np.dtype, tuple[float, float]]:
    import nibabel as nib
    from nibabel.filebasedimages import ImageFileError

    from voxdiff.io.limits import check_data_size, check_voxel_count

    try:
        img = nib.load(str(path))  # the header only: the voxels are read below
        # What the header promises is checked before anything is allocated for it.
        count = check_voxel_count(img.shape, str(path))
        offset = getattr(img.dataobj, "offset", None)
        needed = int(img.header.get_data_offset() if offset is None else offset) + count * img.get_data_dtype().itemsize
        gz = path.name.lower().endswith(".gz")
        check_data_size(str(path), needed, _check_gzip(path) if gz else path.stat().st_size)
        # Scaling in float32 keeps a read -> write -> read round trip bit-exact.
        data = np.asarray(img.get_fdata(dtype=np.float32))
    except (ImageFileError, gzip.BadGzipFile, zlib.error, EOFError) as exc:
        raise VoxdiffError(f"{path}: not a readable NIfTI file (corrupt, truncated or not NIfTI: {_one_line(exc)})") from exc
    except (OSError, ValueError) as exc:
        raise VoxdiffError(f"{path}: could not read NIfTI data ({_one_line(exc)})") from exc
    header = img.header.copy()
    # nibabel moves scl_slope/scl_inter from the header into the data proxy on load.
    slope = float(getattr(img.dataobj, "slope", 1.0))
    inter = float(getattr(img.dataobj, "inter", 0.0))
    scaling = (slope if np.isfinite(slope) and slope != 0 else 1.0, inter if np.isfinite(inter) else 0.0)
    return data, np.asarray(img.affine, dtype=np.float64), header, img.get_data_dtype(), scaling


def _itk_detail(exc: RuntimeError) -> str:
    """The reason in a SimpleITK exception, on one line (its first line names ITK's own source file)."""
    lines = [re.sub(r"^ITK ERROR: \w+\(0x[0-9a-f]+\): ", "", ln.strip()) for ln in str(exc).strip().splitlines()[1:]]
    return "; ".join(ln for ln in lines if ln) or _one_line(exc)


def _write_itk(img: Any, path: Path) -> None:
    """``sitk.WriteImage`` into a temporary file (a folder for detached headers) renamed onto ``path``."""
    sitk = _sitk()
    detached = full_suffix(path).lower() in (".mhd", ".nhdr")  # header + data file named after it
    with (atomic_file_set(path) if detached else atomic_path(path)) as tmp:
        try:
            sitk.WriteImage(img, str(tmp), True)
        except RuntimeError as exc:
            # ITK reports write failures (disk full, size limit) as RuntimeError, not OSError: the
            # system's reason, when ITK gives one, is turned back into the OSError atomic_path reports.
            detail = _itk_detail(exc).replace(str(tmp), str(path))
            reason = re.search(r"Reason: ([^;]+)", detail)
            codes = {os.strerror(c): c for c in (errno.ENOSPC, errno.EFBIG, getattr(errno, "EDQUOT", errno.ENOSPC))}
            code = codes.get(reason.group(1).strip()) if reason else None
            if code is not None:
                raise OSError(code, os.strerror(code)) from exc
            raise VoxdiffError(f"{path}: could not write ({detail}); nothing was written") from exc


def _read_itk(path: Path) -> tuple[np.ndarray, np.ndarray, np.dtype]:
    sitk = _sitk()
    from voxdiff.io.limits import check_voxel_count

    try:
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        reader.ReadImageInformation()  # the header: its size is checked before the voxels are allocated
        comps = int(reader.GetNumberOfComponents())
        check_voxel_count(tuple(reader.GetSize()) + ((comps,) if comps > 1 else ()), str(path))
        img = reader.Execute()
    except RuntimeError as exc:
        raise VoxdiffError(f"{path}: not a readable {full_suffix(path)} file (corrupt, truncated or another format: {_itk_detail(exc)})") from exc
    arr = sitk.GetArrayFromImage(img)
    disk_dtype = arr.dtype
    arr = np.ascontiguousarray(arr.T)  # SimpleITK gives (z, y, x)
    dim = img.GetDimension()
    direction = np.array(img.GetDirection(), dtype=np.float64).reshape(dim, dim)
    affine = np.eye(4)
    k = min(dim, 3)
    affine[:k, :k] = direction[:k, :k] @ np.diag(np.array(img.GetSpacing(), dtype=np.float64)[:k])
    affine[:k, 3] = np.array(img.GetOrigin(), dtype=np.float64)[:k]
    return arr.astype(np.float32), _LPS_TO_RAS @ affine, disk_dtype


def load_volume(
    path: str | Path,
    *,
    role: str | None = None,
    require_3d: bool = True,
    allow_nonfinite: bool = False,
    series_uid: str | None = None,
    units: str | None = None,
    allow_bad_affine: bool = False,
) -> Volume:
    """Load a volume and check it; every problem becomes one clear :class:`VoxdiffError`.

    ``role`` (e.g. "source") only decorates messages. A trailing singleton 4th axis is
    dropped; other 4D data, 2D data and NaN/Inf values are refused. A folder (or one ``.dcm``
    file of it) is read as a DICOM series: ``series_uid`` chooses one of several, and
    ``units="suv"`` converts PET to SUV body-weight (see :func:`voxdiff.io.dicom.read_dicom_series`).
    """
    path = Path(path)
    what = f"{path} ({role})" if role else str(path)
    if not path.exists():
        raise VoxdiffError(f"{what}: file not found")
    if path.is_dir() or (full_suffix(path).lower() not in SUPPORTED_SUFFIXES and _is_dicom_file(path)):
        from voxdiff.io.dicom import read_dicom_series

        if not path.is_dir() and series_uid is None:
            series_uid = _dicom_series_uid(path)
        vol = read_dicom_series(path if path.is_dir() else path.parent, series_uid=series_uid, units=units,
                                role=role)
        if not allow_nonfinite and not np.isfinite(vol.array).all():
            raise VoxdiffError(f"{what}: contains {int((~np.isfinite(vol.array)).sum())} NaN/Inf voxel(s)")
        if not allow_bad_affine:
            from voxdiff.io.limits import check_affine

            check_affine(vol.affine, what)
        return vol
    if units not in (None, "stored"):
        raise VoxdiffError(f"{what}: --units {units} needs a DICOM series (its tags); this is a "
                           f"{full_suffix(path) or 'plain'} file")
    fmt = volume_format(path)
    header = None
    scaling = (1.0, 0.0)
    if fmt == "nifti":
        data, affine, header, disk_dtype, scaling = _read_nifti(path)
    elif fmt == "itk":
        data, affine, disk_dtype = _read_itk(path)
    else:
        from voxdiff.io.interfile import read_interfile

        raw, affine = read_interfile(path)
        disk_dtype = raw.dtype
        data = raw.astype(np.float32)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if require_3d and data.ndim != 3:
        raise VoxdiffError(f"{what}: expected a 3D volume, got {data.ndim}D data of shape {tuple(data.shape)}")
    if min(data.shape) < 1:
        raise VoxdiffError(f"{what}: empty volume of shape {tuple(data.shape)}")
    if not allow_nonfinite and not np.isfinite(data).all():
        n_bad = int((~np.isfinite(data)).sum())
        raise VoxdiffError(f"{what}: contains {n_bad} NaN/Inf voxel(s)")
    if not allow_bad_affine:  # commands compute with geometry; ``info`` only reports it
        from voxdiff.io.limits import check_affine

        check_affine(affine, what)
    return Volume(array=data, affine=affine, path=path, header=header, disk_dtype=np.dtype(disk_dtype),
                  disk_scaling=scaling)


def _cast(array: np.ndarray, dtype: np.dtype) -> np.ndarray:
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return np.clip(np.rint(array), info.min, info.max).astype(dtype)
    return array.astype(dtype)


def save_volume(
    volume: Volume | np.ndarray,
    path: str | Path,
    *,
    like: Volume | None = None,
    affine: np.ndarray | None = None,
    dtype: str | np.dtype | None = None,
    format: str | None = None,
    **dicom: Any,
) -> Path:
    """Write a volume atomically in the format its extension names (or ``format="dicom"``).

    Geometry comes from ``volume`` itself, else ``like`` (a volume whose affine and header
    are reused: "write in the input's geometry"), else ``affine``. ``dtype`` defaults to
    float32; pass ``"like"`` to reuse the stored dtype of the reference (labels, round trips).
    ``format="dicom"`` writes a series folder at ``path`` with
    :func:`voxdiff.io.dicom.save_dicom_series`; ``dicom`` holds its options (``description``,
    ``model``, ``modality``, ``overwrite``, ...).
    """
    path = Path(path)
    if isinstance(volume, Volume):
        ref = volume
        array = volume.array
    else:
        array = np.asarray(volume)
        ref = like
    if format == "dicom":
        from voxdiff.io.dicom import save_dicom_series

        return save_dicom_series(array, path, like=ref, affine=None if ref is not None else affine, **dicom)
    if format is not None or dicom:
        raise ValueError(f"save_volume: format={format!r} with options {sorted(dicom)}; only format='dicom' "
                         "takes options (other formats follow the file extension)")
    if ref is not None:
        if tuple(array.shape[:3]) != tuple(ref.array.shape[:3]):
            raise VoxdiffError(f"{path}: output shape {array.shape} differs from the reference geometry {ref.array.shape}")
        aff = ref.affine
        header = ref.header
    elif affine is not None:
        aff, header = np.asarray(affine, dtype=np.float64), None
    else:
        raise ValueError("save_volume needs a Volume, or an array with like= or affine=")
    slope, inter = 1.0, 0.0
    if dtype == "like":
        out_dtype = np.dtype(ref.disk_dtype if ref is not None and ref.disk_dtype is not None else np.float32)
        if ref is not None and np.issubdtype(out_dtype, np.integer):
            slope, inter = ref.disk_scaling
    else:
        out_dtype = np.dtype(dtype or np.float32)
    fmt = volume_format(path)
    if fmt == "nifti":
        import nibabel as nib

        hdr = header.copy() if isinstance(header, nib.Nifti1Header) else None
        raw = _cast((array - inter) / slope if (slope, inter) != (1.0, 0.0) else array, out_dtype)
        img = nib.Nifti1Image(raw, aff, header=hdr)
        img.set_data_dtype(out_dtype)
        # The stored scaling of the reference is kept ("like"); otherwise values go unscaled.
        img.header.set_slope_inter(slope, inter)
        with atomic_path(path) as tmp:
            nib.save(img, str(tmp))
    elif fmt == "itk":
        sitk = _sitk()
        if (slope, inter) != (1.0, 0.0):  # MHA/NRRD store no intensity scaling
            out_dtype = np.dtype(np.float32)
        lps = _LPS_TO_RAS @ aff
        spacing = np.sqrt((lps[:3, :3] ** 2).sum(axis=0))
        img = sitk.GetImageFromArray(np.ascontiguousarray(_cast(array, out_dtype).T))
        img.SetSpacing(tuple(float(s) for s in spacing))
        img.SetDirection(tuple(float(v) for v in (lps[:3, :3] / spacing).ravel()))
        img.SetOrigin(tuple(float(v) for v in lps[:3, 3]))
        _write_itk(img, path)
    else:
        from voxdiff.io.interfile import write_interfile

        write_interfile(path, _cast(array, out_dtype), aff)
    return path


def check_same_geometry(a: Volume, b: Volume, *, atol: float = 1e-3, what: str = "") -> None:
    """Raise a clear error unless two volumes share shape and affine (within ``atol`` mm)."""
    prefix = f"{what}: " if what else ""
    if a.shape != b.shape:
        raise VoxdiffError(f"{prefix}{b.path} has shape {b.shape} but {a.path} has {a.shape}")
    if not np.allclose(a.affine, b.affine, atol=atol):
        raise VoxdiffError(f"{prefix}{b.path} and {a.path} have different affines (geometry mismatch)")


def volume_shape(path: str | Path, *, read_data: bool = False) -> tuple[int, ...]:
    """The voxel grid of a volume file (its first three axes); ``read_data`` also reads every voxel
    (a truncated or corrupt file raises). Raises :class:`VoxdiffError` or ``OSError`` when unreadable."""
    if full_suffix(Path(path)).lower() in (".nii", ".nii.gz"):  # header first: 4D outputs (probabilities) too
        import nibabel as nib

        try:
            img = nib.load(str(path))
            if read_data:
                import numpy as np

                np.asarray(img.dataobj)
        except Exception as exc:  # nibabel raises many kinds for a broken file
            raise VoxdiffError(f"{path}: not a readable NIfTI file ({exc})") from exc
        return tuple(int(n) for n in img.shape[:3])
    return tuple(load_volume(path).shape[:3])
