"""benchmarks/escape_estimate.py: synthetic defects below a run's own calibrated threshold."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import load_benchmark

escape_estimate = load_benchmark("escape_estimate.py", "bench_escape_estimate")


def test_escape_table_counts_scores_below_the_threshold_by_kind_and_contrast() -> None:
    scores = np.array([1.0, 5.0, 3.0, 2.0, 6.0, 0.5])
    kinds = ["scratch", "spot", "scratch", "spot", "scratch", "spot"]
    contrasts = np.array([1.0, 9.0, 5.0, 2.0, 8.0, 4.0])
    t = escape_estimate.escape_table(scores, kinds, contrasts, threshold=3.0)
    # 1, 2 and 0.5 pass; 3 sits at the threshold and FAILs (the verdict rule), 5 and 6 fail
    assert t["n"] == 6 and t["escapes"] == pytest.approx(3 / 6)
    assert t["by_kind"] == {"scratch": pytest.approx(1 / 3), "spot": pytest.approx(2 / 3)}
    # terciles of the contrast: {1, 2} faint (both pass), {4, 5} medium (0.5 passes, 3 fails), {8, 9} strong
    assert t["by_contrast"] == {"faint": 1.0, "medium": 0.5, "strong": 0.0}


def test_contrast_is_the_mean_change_inside_the_mask() -> None:
    original = np.full((4, 4), 100, np.uint8)
    defective = original.copy()
    defective[0, :2] = [70, 130]
    mask = np.zeros((4, 4), np.uint8)
    mask[0, :3] = 1  # the third masked pixel did not change
    assert escape_estimate.contrast(defective, original, mask) == pytest.approx(60 / 3)
    assert escape_estimate.contrast(defective, original, np.zeros_like(mask)) == 0.0
    rgb = np.stack([defective] * 3, axis=2)
    assert escape_estimate.contrast(rgb, np.stack([original] * 3, axis=2), mask) == pytest.approx(20.0)


def test_a_run_is_judged_at_its_own_threshold(trained_run: Path, synth_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "esc.json"
    assert escape_estimate.main(["--runs", str(trained_run), "--data", str(synth_data), "--json", str(out)]) == 0
    (row,) = json.loads(out.read_text())
    meta = json.loads((trained_run / "run.json").read_text())
    assert row["threshold"] == meta["calibration"]["threshold"]
    assert row["fit_images"] == len(meta["calibration_roles"]["fit"])
    scores = np.asarray(row["synthetic_scores"])
    # four kinds drawn into every fit image, at least once each
    assert row["n"] == len(scores) >= 4 * row["fit_images"] and len(row["by_kind"]) == 4
    assert row["escapes"] == pytest.approx(float((scores < row["threshold"]).mean()))
    # the same defects scored one by one give the same scores (the deployed path, whatever the batch)
    again = escape_estimate.estimate(trained_run, synth_data, batch=1)
    np.testing.assert_allclose(again["synthetic_scores"], scores, rtol=1e-4, atol=1e-4)
    assert escape_estimate.main(["--runs", str(trained_run), str(trained_run), "--data", "a", "b", "c"]) == 2
