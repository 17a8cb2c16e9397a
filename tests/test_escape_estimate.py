"""benchmarks/escape_estimate.py: synthetic defects below a run's own calibrated threshold."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import load_benchmark

escape_estimate = load_benchmark("escape_estimate.py", "bench_escape_estimate")


def test_a_run_is_judged_at_its_own_threshold(trained_run: Path, synth_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "esc.json"
    args = ["--runs", str(trained_run), "--data", str(synth_data), "--json", str(out)]
    assert escape_estimate.main(args) == 0
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


def test_image_scores_are_judged_at_their_own_thresholds(
    trained_run: Path, synth_data: Path, tmp_path: Path
) -> None:
    out = tmp_path / "reduce.json"
    args = ["--runs", str(trained_run), "--data", str(synth_data), "--json", str(out)]
    assert escape_estimate.main([*args, "--reduce", "max", "topk_mean"]) == 0
    (row,) = json.loads(out.read_text())
    meta = json.loads((trained_run / "run.json").read_text())
    assert row["threshold_images"] == len(meta["calibration_roles"]["threshold"])
    by = {c["reduce"]: c for c in row["candidates"]}
    assert set(by) == {"max", "topk_mean"}
    (chosen,) = [c for c in row["candidates"] if c["chosen"]]
    # the run's own image score: its stored threshold, and the plain estimate's escapes (the same defects)
    assert chosen["calibrated"]["threshold"] == pytest.approx(meta["calibration"]["threshold"], rel=1e-6)
    plain = escape_estimate.estimate(trained_run, synth_data)
    assert chosen["calibrated"]["escapes"] == pytest.approx(plain["escapes"], abs=1e-9)
    for c in row["candidates"]:
        for where in ("calibrated", "fit"):
            assert c[where]["n"] == plain["n"] and 0.0 <= c[where]["escapes"] <= 1.0
    # the two scores differ, and so do their thresholds (each is set on its own scores)
    assert by["max"]["calibrated"]["threshold"] != by["topk_mean"]["calibrated"]["threshold"]
    assert by["max"]["fit"]["threshold"] != by["max"]["calibrated"]["threshold"]


def test_position_weights_are_judged_at_their_own_thresholds(
    trained_run: Path, synth_data: Path, tmp_path: Path
) -> None:
    from conftest import tiny_config

    from trainer.train import fit

    run = tmp_path / "position_run"
    cfg = tiny_config(fusion={"select": "none"}, position={"enabled": True, "grid": 4, "candidates": [0.5]})
    fit(cfg, synth_data, run, progress=False)
    meta = json.loads((run / "run.json").read_text())
    out = tmp_path / "weights.json"
    args = [
        "--runs",
        str(run),
        "--data",
        str(synth_data),
        "--json",
        str(out),
        "--position-weights",
        "0",
        "0.5",
    ]
    assert escape_estimate.main(args) == 0
    (row,) = json.loads(out.read_text())
    assert row["setting"] == "position" and [c["position"] for c in row["candidates"]] == [0.0, 0.5]
    (chosen,) = [c for c in row["candidates"] if c["chosen"]]
    assert chosen["position"] == meta["position_selection"]["weight"]
    assert chosen["calibrated"]["threshold"] == pytest.approx(meta["calibration"]["threshold"], rel=1e-6)
    assert chosen["objective"] == pytest.approx(
        next(r["objective"] for r in meta["position_selection"]["rows"] if r["weight"] == chosen["position"])
    )
    off, on = row["candidates"]
    assert off["calibrated"]["threshold"] != on["calibrated"]["threshold"]  # the cue changes the score
    # a run without the cue is refused with a one-line reason
    with pytest.raises(SystemExit, match="has no position cue fitted"):
        escape_estimate.main(
            ["--runs", str(trained_run), "--data", str(synth_data), "--position-weights", "0"]
        )
