"""Interfile (``.hv`` header + raw data, optionally bzip2'd), as used by STIR/SIRF and BrainWeb.

Voxel order on disk is x fastest, then y, then z; arrays are returned as (x, y, z). The
affine is diagonal (the header's ``scaling factor (mm/pixel)``) with the translation from
``first pixel offset (mm)`` when present; Interfile does not store a rotation.
"""

from __future__ import annotations

import bz2
import re
from pathlib import Path

import numpy as np

from voxdiff.errors import VoxdiffError

_FORMATS = {
    ("unsigned integer", 1): "u1",
    ("unsigned integer", 2): "u2",
    ("unsigned integer", 4): "u4",
    ("signed integer", 1): "i1",
    ("signed integer", 2): "i2",
    ("signed integer", 4): "i4",
    ("float", 4): "f4",
    ("float", 8): "f8",
    ("short float", 4): "f4",
    ("long float", 8): "f8",
}


def parse_header(path: Path) -> dict[str, str]:
    """Parse ``key := value`` lines of an Interfile header; keys are lower-cased, ``!`` dropped."""
    try:
        text = path.read_text(errors="strict")
    except UnicodeDecodeError as exc:
        raise VoxdiffError(f"{path}: not a text Interfile header") from exc
    if "interfile" not in text[:200].lower():
        raise VoxdiffError(f"{path}: not an Interfile header (no '!INTERFILE' line)")
    out: dict[str, str] = {}
    for line in text.splitlines():
        if ":=" not in line:
            continue
        key, value = line.split(":=", 1)
        key = re.sub(r"\s+", " ", key.strip().lstrip("!").strip().lower())
        out[key] = value.strip()
    return out


def _data_file(header_path: Path, name: str) -> Path:
    candidate = header_path.parent / Path(name).name
    if candidate.exists():
        return candidate
    for alt in (candidate.with_name(candidate.name + ".bz2"),):
        if alt.exists():
            return alt
    raise VoxdiffError(f"{header_path}: data file {candidate.name} (or {candidate.name}.bz2) not found")


def read_interfile(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read an Interfile image; return (array in its stored dtype, 4x4 affine)."""
    path = Path(path)
    h = parse_header(path)
    try:
        ndim = int(h.get("number of dimensions", "3"))
        shape = [int(h[f"matrix size [{i}]"]) for i in range(1, ndim + 1)]
        spacing = [float(h.get(f"scaling factor (mm/pixel) [{i}]", "1")) for i in range(1, ndim + 1)]
        offset = [float(h.get(f"first pixel offset (mm) [{i}]", "0")) for i in range(1, ndim + 1)]
        fmt = h.get("number format", "float").lower()
        nbytes = int(h.get("number of bytes per pixel", "4"))
        data_name = h["name of data file"]
        data_offset = int(h.get("data offset in bytes [1]", h.get("data starting block", "0")))
    except (KeyError, ValueError) as exc:
        raise VoxdiffError(f"{path}: incomplete Interfile header ({exc})") from exc
    if (fmt, nbytes) not in _FORMATS:
        raise VoxdiffError(f"{path}: unsupported Interfile number format '{fmt}' with {nbytes} bytes")
    order = "<" if h.get("imagedata byte order", "LITTLEENDIAN").upper().startswith("LITTLE") else ">"
    dtype = np.dtype(order + _FORMATS[(fmt, nbytes)])
    data_path = _data_file(path, data_name)
    from voxdiff.io.limits import check_data_size, check_voxel_count

    count = check_voxel_count(shape, str(path))  # before anything is allocated for the voxels
    needed = data_offset + count * dtype.itemsize
    try:
        if data_path.suffix == ".bz2":
            with bz2.open(data_path, "rb") as f:  # never decompress more than the header promises
                raw = f.read(needed)
        else:
            check_data_size(str(data_path), needed, data_path.stat().st_size)
            raw = data_path.read_bytes()
    except (OSError, EOFError, ValueError) as exc:
        raise VoxdiffError(f"{data_path}: could not read Interfile data ({exc})") from exc
    if len(raw) < needed:
        raise VoxdiffError(
            f"{data_path}: truncated Interfile data ({len(raw)} bytes, header needs {needed})"
        )
    arr = np.frombuffer(raw, dtype=dtype, count=count, offset=data_offset)
    arr = arr.reshape(shape[::-1]).transpose(tuple(range(ndim))[::-1]).astype(dtype.newbyteorder("="))
    affine = np.eye(4)
    for i in range(min(ndim, 3)):
        affine[i, i] = spacing[i]
        affine[i, 3] = offset[i]
    return np.ascontiguousarray(arr), affine


_REVERSE = {v: k for k, v in _FORMATS.items() if not k[0].startswith(("short", "long"))}


def write_interfile(path: str | Path, array: np.ndarray, affine: np.ndarray) -> None:
    """Write ``array`` (x, y, z) as ``path`` (.hv) + a raw data file beside it (.v).

    Only diagonal affines can be stored; the rotation-free part is kept exactly.
    """
    from voxdiff.io.atomic import atomic_path

    path = Path(path)
    if not np.allclose(affine[:3, :3], np.diag(np.diag(affine[:3, :3]))):
        raise VoxdiffError(f"{path}: Interfile cannot store a rotated or sheared affine")
    arr = np.asarray(array)
    code = arr.dtype.newbyteorder("<").str[1:]
    if code not in _REVERSE:
        arr = arr.astype("<f4")
        code = "f4"
    fmt, nbytes = _REVERSE[code]
    data_path = path.with_suffix(".v")
    lines = ["!INTERFILE  :=", f"name of data file := {data_path.name}", "!GENERAL DATA :=",
             "!GENERAL IMAGE DATA :=", "imagedata byte order := LITTLEENDIAN",
             f"!number format := {fmt}", f"!number of bytes per pixel := {nbytes}",
             f"number of dimensions := {arr.ndim}"]
    for i in range(arr.ndim):
        lines += [f"matrix axis label [{i + 1}] := {'xyz'[i]}", f"!matrix size [{i + 1}] := {arr.shape[i]}",
                  f"scaling factor (mm/pixel) [{i + 1}] := {float(affine[i, i])!r}"]
    for i in range(arr.ndim):
        lines.append(f"first pixel offset (mm) [{i + 1}] := {float(affine[i, 3])!r}")
    lines.append("!END OF INTERFILE :=")
    raw = np.ascontiguousarray(arr.astype(np.dtype("<" + code)).transpose(tuple(range(arr.ndim))[::-1])).tobytes()
    with atomic_path(data_path) as tmp_data, atomic_path(path) as tmp_header:
        tmp_data.write_bytes(raw)
        tmp_header.write_text("\n".join(lines) + "\n")
