"""Simulation of paired training data (low-/full-dose PET on real anatomy)."""

from voxdiff.sim.pet import (
    BRAINWEB_UPTAKE,
    MUSE_UPTAKE,
    SCHEMES,
    PetPair,
    activity_map,
    case_seed,
    head_mask_from_image,
    head_mask_from_labels,
    simulate_pet,
)

__all__ = [
    "BRAINWEB_UPTAKE",
    "MUSE_UPTAKE",
    "SCHEMES",
    "PetPair",
    "activity_map",
    "case_seed",
    "head_mask_from_image",
    "head_mask_from_labels",
    "simulate_pet",
]
