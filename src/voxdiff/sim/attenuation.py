"""Linear attenuation maps at 511 keV (in 1/cm) from anatomy.

Values (narrow-beam, 511 keV): air 0, soft tissue (brain, CSF, scalp, muscle) 0.096 /cm,
cortical bone (skull) 0.15 /cm -- the values of CT-based attenuation correction (e.g. the
bilinear HU conversion of Kinahan et al. 1998/2003 gives ~0.096 for water and 0.13-0.17 for
cortical bone). BrainWeb's shipped ``attenuation.hv`` has 0.096 for soft tissue and up to
0.144 for bone, which a test checks against.

* **MUSE (IXI) label maps**: the label maps cover only the intracranial volume (ICV). The head
  is a mask from the T1 beside the labels (:func:`voxdiff.sim.pet.head_mask_from_image`) or the
  labels dilated by 10 mm. The skull is the T1-dark band around the ICV: head voxels outside the
  ICV, within ``skull_search_mm`` (10 mm) of it and darker than ``dark_fraction`` (0.35) of the
  median white-matter T1 intensity (cortical bone has no MR signal; the scalp's fat is bright).
  Without a T1 the skull is the geometric shell of ``skull_mm`` (6 mm) around the ICV. Air
  spaces inside the head (sinuses, mastoids) are not separated: they get soft tissue or bone.
* **BrainWeb tissue classes**: class 0 (background) = air, 7 (skull) = bone, the others soft tissue.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage as ndi

from voxdiff.errors import VoxdiffError

__all__ = ["MU_511_PER_CM", "mu_map_from_icv", "mu_map_brainweb"]

#: Linear attenuation coefficients at 511 keV, 1/cm.
MU_511_PER_CM: dict[str, float] = {"air": 0.0, "soft_tissue": 0.096, "bone": 0.15}
_BRAINWEB_SKULL = 7


def mu_map_from_icv(icv: np.ndarray, head: np.ndarray, spacing: Sequence[float], *, t1: np.ndarray | None = None,
                    wm: np.ndarray | None = None, skull_search_mm: float = 10.0, dark_fraction: float = 0.35,
                    skull_mm: float = 6.0) -> tuple[np.ndarray, dict]:
    """Mu map (1/cm, float32) and a description, from the ICV, the head mask and optionally the T1.

    ``wm`` (a white-matter mask) sets the T1 reference intensity; default: the ICV's 75th percentile.
    """
    icv = np.asarray(icv, bool)
    head = np.asarray(head, bool) | icv
    if t1 is not None and np.shape(t1) != icv.shape:
        raise VoxdiffError(f"T1 shape {np.shape(t1)} differs from the label map's {icv.shape}")
    dist = ndi.distance_transform_edt(~icv, sampling=[float(s) for s in spacing])
    outside = head & ~icv
    if t1 is not None:
        ref_mask = wm if wm is not None and np.any(wm) else icv
        ref = float(np.median(t1[ref_mask])) if wm is not None and np.any(wm) else float(np.percentile(t1[icv], 75))
        bone = outside & (dist <= skull_search_mm) & (t1 < dark_fraction * ref)
        how = (f"T1-dark (< {dark_fraction:g} x reference T1 {ref:.0f}) head voxels within {skull_search_mm:g} mm "
               "outside the ICV")
    else:
        bone = outside & (dist <= skull_mm)
        how = f"shell of {skull_mm:g} mm around the ICV"
    mu = np.where(head, MU_511_PER_CM["soft_tissue"], MU_511_PER_CM["air"]).astype(np.float32)
    mu[bone] = MU_511_PER_CM["bone"]
    info = {"units": "1/cm", "values_per_cm": dict(MU_511_PER_CM), "skull": how,
            "bone_voxels": int(bone.sum()), "head_voxels": int(head.sum())}
    return mu, info


def mu_map_brainweb(classes: np.ndarray) -> tuple[np.ndarray, dict]:
    """Mu map (1/cm) from BrainWeb tissue classes: 0 air, 7 skull = bone, the rest soft tissue."""
    classes = np.asarray(classes)
    mu = np.where(classes > 0, MU_511_PER_CM["soft_tissue"], MU_511_PER_CM["air"]).astype(np.float32)
    mu[classes == _BRAINWEB_SKULL] = MU_511_PER_CM["bone"]
    return mu, {"units": "1/cm", "values_per_cm": dict(MU_511_PER_CM),
                "skull": "BrainWeb class 7", "bone_voxels": int((classes == _BRAINWEB_SKULL).sum())}
