"""Evaluation metrics for whole 3D volumes: numpy arrays in, Python floats and dicts out.

* :mod:`voxdiff.metrics.image`: PSNR, SSIM, MAE, NMSE, NRMSE of a volume against a reference.
* :mod:`voxdiff.metrics.segmentation`: per-label Dice and HD95 (mm).
* :mod:`voxdiff.metrics.pet`: the quantities PET users report: regional mean bias, per-lesion
  contrast recovery (CRC) and background variability (BV), invented hot spots.
* :mod:`voxdiff.metrics.summary`: mean and std over cases.
* :mod:`voxdiff.metrics.evaluation`: prediction/target files of each case (folders, manifest),
  scored and summarised as ``voxdiff evaluate`` does (``find_pairs``, ``evaluate_pairs``).

The conventions (data range, masks, windows, ROIs, empty structures) are in ``docs/metrics.md``.
"""

from __future__ import annotations

from voxdiff.metrics.evaluation import (
    EvaluationReport,
    Pair,
    Pairing,
    PetSettings,
    evaluate_pairs,
    find_pairs,
)
from voxdiff.metrics.image import (
    IMAGE_METRICS,
    SSIM_SIGMA,
    SSIM_WINDOW,
    default_data_range,
    image_metrics,
    mae,
    nmse,
    nrmse,
    psnr,
    ssim,
)
from voxdiff.metrics.pet import (
    DEFAULT_SIZE_BINS_MM,
    PET_REGIONS,
    background_variability,
    crc_summary,
    hotspots,
    lesion_crc,
    lesion_specs,
    pet_metrics,
    pet_region_map,
    read_lesion_json,
    regional_bias,
)
from voxdiff.metrics.segmentation import SEG_METRICS, dice, hd95, segmentation_metrics
from voxdiff.metrics.summary import summarize

__all__ = [
    "SSIM_WINDOW",
    "SSIM_SIGMA",
    "IMAGE_METRICS",
    "SEG_METRICS",
    "default_data_range",
    "psnr",
    "ssim",
    "mae",
    "nmse",
    "nrmse",
    "image_metrics",
    "dice",
    "hd95",
    "segmentation_metrics",
    "summarize",
    "PET_REGIONS",
    "DEFAULT_SIZE_BINS_MM",
    "pet_region_map",
    "regional_bias",
    "lesion_specs",
    "read_lesion_json",
    "lesion_crc",
    "background_variability",
    "crc_summary",
    "hotspots",
    "pet_metrics",
    "Pair",
    "Pairing",
    "PetSettings",
    "EvaluationReport",
    "find_pairs",
    "evaluate_pairs",
]
