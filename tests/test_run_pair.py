"""benchmarks/run_pair.py: two runs' chosen selection rows, paired fold by fold."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import load_benchmark

run_pair = load_benchmark("run_pair.py", "bench_run_pair")


def _row(reduce: str, folds: list[float]) -> dict[str, Any]:
    return {
        "reduce": reduce,
        "image_auroc": 0.9,
        "pixel_auroc": 0.9,
        "aupro": 0.8,
        "objective": float(np.mean(folds)),
        "folds": folds,
    }


def _run(tmp: Path, name: str, chosen: str, rows: list[dict[str, Any]]) -> Path:
    run = tmp / name
    run.mkdir()
    doc = {"score_selection": {"reduce": chosen, "candidates": rows}, "fusion_selection": {}}
    (run / "run.json").write_text(json.dumps(doc))
    return run


def test_the_deployed_score_row_is_taken(tmp_path: Path) -> None:
    run = _run(tmp_path, "a", "topk_mean", [_row("max", [1.0] * 5), _row("topk_mean", [2.0] * 5)])
    assert run_pair.chosen_row(run)["folds"] == [2.0] * 5


def test_a_joint_choice_takes_the_row_of_its_sigma_and_score(tmp_path: Path) -> None:
    rows = [{**_row(r, [float(i)] * 5), "sigma": s} for i, (s, r) in enumerate([(4.0, "max"), (2.0, "max")])]
    run = tmp_path / "joint"
    run.mkdir()
    doc = {"score_selection": {"reduce": "max", "sigma": 2.0, "candidates": rows}, "fusion_selection": {}}
    (run / "run.json").write_text(json.dumps(doc))
    assert run_pair.chosen_row(run)["folds"] == [1.0] * 5  # not the first "max" row (sigma 4)


def test_paired_mean_and_standard_error_by_hand() -> None:
    a = _row("max", [2.0, 2.1, 2.2, 2.3, 2.4])
    b = _row("max", [2.1, 2.1, 2.4, 2.3, 2.6])
    mean, se = run_pair.paired(a, b)
    diff = np.array([0.1, 0.0, 0.2, 0.0, 0.2])
    assert mean == pytest.approx(0.1)
    assert se == pytest.approx(np.sqrt(np.sum((diff - 0.1) ** 2) / 4) / np.sqrt(5))


def test_unpaired_runs_and_missing_runs_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="different fold counts"):
        run_pair.paired(_row("max", [1.0] * 5), _row("max", [1.0] * 4))
    with pytest.raises(SystemExit, match=r"run\.json not found"):
        run_pair.chosen_row(tmp_path)
