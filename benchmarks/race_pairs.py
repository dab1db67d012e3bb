"""Paired differences between two methods of ``benchmarks/pet_race.py`` reports, per dose and subject.

Subjects differ by ~3 dB in PSNR (a hot lesion sets each one's data range), so two methods are
compared on the same subject: mean ± sd (ddof 0, as every summary here) over subjects of (A - B), how
many subjects A wins, and the range. Methods may come from different reports of the same race (e.g. a dose-5 and a dose-1 run);
only subjects scored by both count.

Example::

    python benchmarks/race_pairs.py benchmarks/results/pet_race_unet_comp_a.json \\
        --pair shipped:unet_comp5 --pair shipped:gaussian
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

# The summaries of the simulation report (mean and sd with ddof 0, docs/metrics.md), as pet_race.py's
# paired column uses them: the same difference prints the same here and there.
sys.path.insert(0, str(Path(__file__).resolve().parent))
import pet_simulation_report as psr  # noqa: E402


def per_subject(reports: list[dict]) -> dict[str, dict[str, dict[str, dict[str, float]]]]:
    """``{dose: {method: {case: {"psnr": .., "ssim": ..}}}}`` against the truth, merged over reports."""
    out: dict = {}
    for report in reports:
        for dose, block in report["doses"].items():
            for row in block["subjects"]:
                for name, m in row["images"].items():
                    out.setdefault(dose, {}).setdefault(name, {})[row["case"]] = {
                        "psnr": float(m["psnr_truth"]), "ssim": float(m["ssim_truth"])}
    return out


def paired(scores: dict, dose: str, a: str, b: str) -> dict | None:
    """Paired (a - b) PSNR / SSIM summary on the subjects both methods have at ``dose``, or None."""
    per = scores.get(dose, {})
    if a not in per or b not in per:
        return None
    cases = sorted(set(per[a]) & set(per[b]))
    if not cases:
        return None
    dp = np.array([per[a][c]["psnr"] - per[b][c]["psnr"] for c in cases])
    ps = psr._ms(dp)
    return {"n": len(cases), "psnr_mean": ps["mean"], "psnr_sd": ps["sd"], "wins": int((dp > 0).sum()),
            "psnr_min": float(dp.min()), "psnr_max": float(dp.max()),
            "ssim_mean": psr._ms([per[a][c]["ssim"] - per[b][c]["ssim"] for c in cases])["mean"]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("reports", nargs="+", type=Path, help="pet_race.py --out JSON files")
    ap.add_argument("--pair", action="append", required=True, metavar="A:B",
                    help="methods to compare as A - B (repeatable); A@D / B@D names are matched as written")
    args = ap.parse_args(argv)
    scores = per_subject([json.loads(p.read_text()) for p in args.reports])
    for spec in args.pair:
        a, sep, b = spec.partition(":")
        if not sep or not a or not b:
            raise SystemExit(f"--pair {spec!r}: expected A:B (two method names)")
        found = False
        for dose in sorted(scores, key=float):
            r = paired(scores, dose, a, b)
            if r is None:
                continue
            found = True
            print(f"{dose} %: {a} - {b}: {r['psnr_mean']:+.2f} ± {r['psnr_sd']:.2f} dB, better on {r['wins']} of "
                  f"{r['n']} ({r['psnr_min']:+.2f} .. {r['psnr_max']:+.2f}); SSIM {r['ssim_mean']:+.3f}")
        if not found:
            raise SystemExit(f"--pair {spec!r}: no dose has both methods in these reports")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
