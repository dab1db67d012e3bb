"""benchmarks/race_pairs.py: paired per-subject differences merged over pet_race reports."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def pairs():
    spec = importlib.util.spec_from_file_location("race_pairs", REPO / "benchmarks" / "race_pairs.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _report(dose: str, scores: dict[str, dict[str, float]]) -> dict:
    cases = sorted({c for per in scores.values() for c in per})
    return {"doses": {dose: {"subjects": [
        {"case": c, "images": {n: {"psnr_truth": per[c], "ssim_truth": per[c] / 100}
                               for n, per in scores.items() if c in per}} for c in cases]}}}


def test_pairs_are_taken_on_shared_subjects_across_reports(pairs, tmp_path, capsys):
    a = _report("5", {"ppdm": {"s1": 30.0, "s2": 28.0, "s3": 27.0}, "gaussian": {"s1": 29.0, "s2": 28.5, "s3": 26.0}})
    b = _report("5", {"unet": {"s1": 29.5, "s2": 27.0}})
    files = []
    for i, rep in enumerate((a, b)):
        files.append(tmp_path / f"r{i}.json")
        files[-1].write_text(json.dumps(rep))
    scores = pairs.per_subject([a, b])
    r = pairs.paired(scores, "5", "ppdm", "gaussian")
    assert r["n"] == 3 and r["wins"] == 2 and r["psnr_mean"] == pytest.approx(0.5)
    assert r["psnr_min"] == pytest.approx(-0.5) and r["psnr_max"] == pytest.approx(1.0)
    r = pairs.paired(scores, "5", "ppdm", "unet")  # unet was scored on s1 and s2 only
    assert r["n"] == 2 and r["psnr_mean"] == pytest.approx(0.75) and r["ssim_mean"] == pytest.approx(0.0075)
    assert pairs.paired(scores, "1", "ppdm", "unet") is None
    assert pairs.main([str(f) for f in files] + ["--pair", "ppdm:unet"]) == 0
    assert "+0.75" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="no dose has both"):
        pairs.main([str(files[0]), "--pair", "ppdm:unet"])
    with pytest.raises(SystemExit, match="expected A:B"):
        pairs.main([str(files[0]), "--pair", "ppdm"])
