"""Lesion CRC against the true activity ratio measured in the activity map (NEMA's actual ratio)."""

from __future__ import annotations

import math

import numpy as np

from voxdiff.metrics.pet import lesion_crc


def _phantom(contrast_in_table: float, true_ratio: float):
    act = np.full((40, 40, 40), 2.0, np.float32)
    zz, yy, xx = np.meshgrid(*[np.arange(40)] * 3, indexing="ij")
    sphere = (zz - 20) ** 2 + (yy - 20) ** 2 + (xx - 20) ** 2 <= 4 ** 2
    act[sphere] = 2.0 * true_ratio
    lesion_map = sphere.astype(np.int32)
    lesions = [{"id": 1, "centre_voxel": [20.0, 20.0, 20.0], "centre_mm": [0, 0, 0], "diameter_mm": 16.0,
                "contrast": contrast_in_table, "background_activity": 2.0, "region": "WM"}]
    return act, lesion_map, lesions


def test_activity_map_fixes_a_table_contrast_that_is_not_the_backgrounds():
    act, lesion_map, lesions = _phantom(contrast_in_table=2.0, true_ratio=4.0)
    # A perfect image of the activity: CRC 1 only when divided by the true ratio.
    table = lesion_crc(act, lesions, (2, 2, 2), lesion_map=lesion_map)[0]
    true = lesion_crc(act, lesions, (2, 2, 2), lesion_map=lesion_map, activity=act)[0]
    assert math.isclose(table["crc"], 3.0, rel_tol=1e-5)
    assert math.isclose(true["crc"], 1.0, rel_tol=1e-5) and math.isclose(true["true_contrast"], 4.0, rel_tol=1e-5)
    # Half the excess recovered: CRC 0.5 whatever the table says.
    half = act.copy()
    half[lesion_map > 0] = 2.0 * (1 + 0.5 * 3.0)
    assert math.isclose(lesion_crc(half, lesions, (2, 2, 2), lesion_map=lesion_map, activity=act)[0]["crc"], 0.5,
                        rel_tol=1e-5)


def test_a_lesion_fainter_than_the_floor_is_not_scored():
    act, lesion_map, lesions = _phantom(contrast_in_table=3.0, true_ratio=1.2)
    row = lesion_crc(act, lesions, (2, 2, 2), lesion_map=lesion_map, activity=act)[0]
    assert math.isnan(row["crc"]) and math.isnan(row["true_contrast"])
