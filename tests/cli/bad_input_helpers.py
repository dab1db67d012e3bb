"""Bad-input corpus, shared by tests/cli/test_bad_inputs_*.py: constants and assertions.

The corpus itself (broken volumes, tiny models, broken checkpoints, label folders) is made by the
session-scoped fixtures in tests/cli/conftest.py, so each is built once per run however many modules
use it. Fixtures imported into several test modules would be built once per module instead.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])

#: Names of the corpus volumes every reading command must refuse.
BROKEN_VOLUMES = ["missing", "unknown_ext", "truncated", "text", "garbage", "flat2d", "four_d", "nan", "inf"]

#: What each broken checkpoint's message says (beside its name).
BAD_CHECKPOINTS = {"text": "not a loadable", "foreign": "not a voxdiff checkpoint", "truncated": "not a loadable",
                   "missing": "not found", "empty_run": "no last.pt"}


@pytest.fixture(autouse=True)
def _wide_console(monkeypatch):
    """Wide rich tables keep long tmp paths on one line; import it into a module to use it (autouse there)."""
    monkeypatch.setenv("COLUMNS", "300")


def no_output(*paths: Path) -> None:
    """None of ``paths`` exists, nor a hidden temporary file of it."""
    for p in paths:
        assert not p.exists(), f"{p} was written despite the error"
        leftovers = list(p.parent.glob(f".{p.name}*")) if p.parent.exists() else []
        assert not leftovers, leftovers


def listing(folder: Path) -> list[str]:
    """Every entry under ``folder`` (hidden temporary files and folders included)."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


def models_by_task(translation_model, seg_models, synthesis_model) -> dict[str, Path]:
    """The tiny checkpoints by name: translation, synthesis, seg and preseg."""
    return {"translation": translation_model, "synthesis": synthesis_model, **seg_models}
