"""Simulation of paired training data (low-/full-dose PET on real anatomy)."""

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

__all__ = [
    "BRAINWEB_UPTAKE",
    "MUSE_UPTAKE",
    "SCHEMES",
    "TISSUE_UPTAKE",
    "PetPair",
    "activity_map",
    "case_seed",
    "head_mask_from_image",
    "head_mask_from_labels",
    "simulate_pet",
    "simulate_tissue_pet",
    "tissue_activity_map",
]
