"""Label maps as DICOM SEG (highdicom), referencing the source image series."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from voxdiff.errors import VoxdiffError
from voxdiff.io.atomic import atomic_path
from voxdiff.io.dicom.common import DicomReference, _pydicom
from voxdiff.io.dicom.write import _atomic_folder, _series_description


def save_dicom_seg(
    labels: np.ndarray,
    path: str | Path,
    *,
    like: Any,
    class_names: Sequence[str] | Mapping[int, str],
    description: str | None = None,
    model: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a label map (X, Y, Z; 0 = background) as a BINARY DICOM SEG, one segment per class.

    ``like`` must have been read from DICOM (the SEG references its images and frame) and
    ``labels`` lie on its grid. ``class_names`` names labels ``1..K`` (a sequence, as
    :class:`voxdiff.data.labels.LabelScheme.class_names`) or maps label values to names.
    ``path`` ending in ``.dcm`` is written as that file, any other path as a new folder holding
    ``SEG.dcm``. Returns the file written.
    """
    _pydicom()
    try:
        import highdicom as hd
        from pydicom.sr.codedict import codes
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise VoxdiffError("writing DICOM SEG needs highdicom: pip install 'voxdiff[dicom]'") from exc
    from pydicom import dcmread
    from pydicom.uid import generate_uid

    import voxdiff

    path = Path(path)
    meta = getattr(like, "meta", None) or {}
    ref: DicomReference | None = meta.get("dicom_reference")
    if ref is None:
        source = getattr(like, "path", None)
        raise VoxdiffError(f"{path}: DICOM SEG output needs a DICOM input series to reference, and "
                           f"{source or 'the input'} is not one; write the labels as NIfTI instead")
    labels = np.asarray(labels)
    if labels.shape != tuple(like.array.shape[:3]) or len(ref.files) != labels.shape[2] \
            or not np.allclose(ref.affine, like.affine, atol=1e-4):
        raise VoxdiffError(f"{path}: labels of shape {labels.shape} do not lie on the input series' grid "
                           f"{tuple(like.array.shape[:3])}; DICOM SEG must be written in the input's geometry")
    if not np.all(labels == np.rint(labels)) or labels.min() < 0:
        raise VoxdiffError(f"{path}: labels must be non-negative integers")
    names = dict(class_names) if isinstance(class_names, Mapping) else {i + 1: n for i, n in enumerate(class_names)}
    unknown = sorted(set(np.unique(labels).astype(int).tolist()) - set(names) - {0})
    if unknown:
        raise VoxdiffError(f"{path}: label value(s) {unknown} have no class name (names given for "
                           f"{sorted(names)})")
    numbers = sorted(names)
    algorithm = hd.AlgorithmIdentificationSequence(name=(model or "voxdiff")[:64],
                                                   family=codes.DCM.ArtificialIntelligence,
                                                   version=voxdiff.__version__)
    segments = [hd.seg.SegmentDescription(segment_number=i + 1, segment_label=str(names[v])[:64],
                                          segmented_property_category=codes.SCT.Tissue,
                                          segmented_property_type=codes.SCT.Tissue,
                                          algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                                          algorithm_identification=algorithm)
                for i, v in enumerate(numbers)]
    # Frames follow the source images (axis 2); each frame is (rows, columns) = array (y, x).
    masks = np.stack([np.transpose(labels == v, (2, 1, 0)) for v in numbers], axis=-1)
    try:
        sources = [dcmread(f) for f in ref.files]
    except Exception as exc:
        raise VoxdiffError(f"{ref.folder}: could not re-read the source series for DICOM SEG ({exc})") from exc
    seg = hd.seg.Segmentation(
        source_images=sources, pixel_array=masks, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=segments, series_instance_uid=generate_uid(),
        series_number=1000 + int(ref.header.get("SeriesNumber") or 0) + 1, sop_instance_uid=generate_uid(),
        instance_number=1, manufacturer="voxdiff", manufacturer_model_name=(model or "voxdiff")[:64],
        software_versions=f"voxdiff {voxdiff.__version__}", device_serial_number="0",
        series_description=_series_description(description or "segmentation", model), omit_empty_frames=False)
    if path.suffix.lower() == ".dcm":
        if path.exists() and not overwrite:
            raise VoxdiffError(f"{path}: exists; choose a new file name or allow overwriting")
        with atomic_path(path) as tmp:
            seg.save_as(tmp)
        return path
    with _atomic_folder(path, overwrite) as tmp:
        seg.save_as(tmp / "SEG.dcm")
    return path / "SEG.dcm"
