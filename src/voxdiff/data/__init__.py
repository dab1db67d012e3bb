"""Datasets: case manifests, splits, case loading with geometry checks, normalisation, crops."""

from voxdiff.data.dataset import VolumeDataset, check_label_values, load_case
from voxdiff.data.manifest import Case, load_manifest, scan_folder, split_cases, write_manifest
from voxdiff.data.normalization import (
    case_normalizers,
    fit_dataset_normalizers,
    normalizers_from_dict,
    normalizers_to_dict,
    resolve_normalization,
)

__all__ = [
    "Case",
    "load_manifest",
    "scan_folder",
    "write_manifest",
    "split_cases",
    "load_case",
    "check_label_values",
    "VolumeDataset",
    "case_normalizers",
    "fit_dataset_normalizers",
    "normalizers_to_dict",
    "normalizers_from_dict",
    "resolve_normalization",
]
