"""Simulation of paired training data (low-/full-dose PET on real anatomy: image-space or projection-domain)."""

from voxdiff.sim.pet import (
    BRAINWEB_UPTAKE,
    MUSE_UPTAKE,
    SCHEMES,
    TISSUE_UPTAKE,
    PetPair,
    activity_map,
    case_seed,
    head_mask_from_image,
    head_mask_from_labels,
    simulate_pet,
    simulate_tissue_pet,
    tissue_activity_map,
)
from voxdiff.sim.dataset import (CaseFiles, CaseReport, DatasetReport, ImageSettings, build_pet_dataset,
                                 case_files, simulate_case_to_files)
from voxdiff.sim.physics import ProjectionPet, ProjectionSettings, dose_tag, simulate_projection_pet

__all__ = [
    "BRAINWEB_UPTAKE",
    "CaseFiles",
    "CaseReport",
    "DatasetReport",
    "ImageSettings",
    "MUSE_UPTAKE",
    "SCHEMES",
    "TISSUE_UPTAKE",
    "PetPair",
    "ProjectionPet",
    "ProjectionSettings",
    "activity_map",
    "build_pet_dataset",
    "case_files",
    "case_seed",
    "dose_tag",
    "head_mask_from_image",
    "head_mask_from_labels",
    "simulate_case_to_files",
    "simulate_pet",
    "simulate_projection_pet",
    "simulate_tissue_pet",
    "tissue_activity_map",
]
