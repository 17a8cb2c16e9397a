"""Two runs of the same part compared on calibration data only: each run's chosen selection row.

A fit chooses the cue mix and then the image score on graded synthetic defects drawn into its calibration
fit images, and ``run.json`` keeps every candidate's per-fold objectives (image AUROC + pixel AUROC +
AUPRO on the synthetic defects). Two runs with the same seed, split and synthetic defects (e.g. two
teachers) are paired fold by fold: this prints each run's chosen objective and the mean of the paired
fold differences B - A with its standard error. No test image is read.

    .venv/bin/python benchmarks/run_pair.py RUN_A RUN_B
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from trainer.select import paired_se


def chosen_row(run: Path) -> dict[str, Any]:
    """The selection row the fit deployed: the chosen image score's row (it carries the chosen mix)."""
    path = run / "run.json"
    if not path.is_file():
        raise SystemExit(f"error: {path} not found; pass a run folder written by masf-train fit")
    doc = json.loads(path.read_text())
    scores = doc.get("score_selection") or {}
    for cand in scores.get("candidates", []):
        if cand["reduce"] == scores.get("reduce") and cand.get("sigma") == scores.get("sigma"):
            return dict(cand)
    for cand in (doc.get("fusion_selection") or {}).get("candidates", []):
        if cand.get("chosen"):
            return dict(cand)
    raise SystemExit(f"error: {run}/run.json has no selection rows with folds (a fit with select: synthetic)")


def paired(a: dict[str, Any], b: dict[str, Any]) -> tuple[float, float]:
    """Mean of the per-fold differences ``b - a`` and its standard error (the one the selection's
    one-standard-error rule uses)."""
    fa, fb = np.asarray(a["folds"], float), np.asarray(b["folds"], float)
    if fa.shape != fb.shape:
        raise SystemExit("error: the two runs have different fold counts; they are not paired")
    diff = fb - fa
    return float(diff.mean()), paired_se(diff)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_a", type=Path)
    ap.add_argument("run_b", type=Path)
    args = ap.parse_args()
    a, b = chosen_row(args.run_a), chosen_row(args.run_b)
    mean, se = paired(a, b)
    for name, row in (("A", a), ("B", b)):
        terms = " / ".join(f"{row[k]:.4f}" for k in ("image_auroc", "pixel_auroc", "aupro"))
        print(f"{name}: objective {row['objective']:.4f} ({terms})")
    gap = b["objective"] - a["objective"]
    in_se = f"{mean / se:+.1f} SE" if se > 0 else "identical folds"
    print(f"B - A: gap {gap:+.4f}; fold mean {mean:+.4f} (SE {se:.4f}): {in_se}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
