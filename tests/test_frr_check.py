"""benchmarks/frr_check.py: the holdout split, the rules' emulated false-reject rates on generated
scores, and one real (tiny) fit end to end."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import yaml
from conftest import load_benchmark, tiny_config

from trainer.config import config_to_dict


def _load_script() -> ModuleType:
    return load_benchmark("frr_check.py", "bench_frr_check")


def test_holdout_split_is_seeded_disjoint_and_complete() -> None:
    bench = _load_script()
    files = [f"train/good/{i:03d}.png" for i in range(50)]
    rest, held = bench.holdout_split(files[::-1], 0.2, seed=3)
    assert len(held) == 10 and sorted(rest + held) == files and not set(rest) & set(held)
    assert bench.holdout_split(files, 0.2, seed=3) == (rest, held)
    assert bench.holdout_split(files, 0.2, seed=4)[1] != held


@pytest.mark.parametrize("kind", ["normal", "lognormal"])
def test_emulated_rates_match_what_each_rule_promises(kind: str) -> None:
    """Exchangeable scores: the largest of n threshold scores rejects 1 / (n + 1) of new good parts
    whatever the distribution; the normal bound keeps the 1 % target only for normal scores (heavy
    tails, as magnetic tile's, push it far above)."""
    bench = _load_script()
    rng = np.random.default_rng(0)
    pool = rng.normal(size=4000) if kind == "normal" else rng.lognormal(sigma=1.0, size=4000)
    rates = bench.emulate(pool, 61, 600, 0.01, seed=1)
    assert rates["max"] == pytest.approx(1 / 62, abs=0.003)
    assert rates["product"] <= rates["max"] + 1e-9  # never below the largest threshold score
    if kind == "normal":
        assert rates["gaussian"] == pytest.approx(0.01, abs=0.003)
    else:
        assert rates["gaussian"] > 0.02


@pytest.mark.timeout(300)
def test_frr_check_end_to_end_on_a_tiny_part(synth_data: Path, tmp_path: Path) -> None:
    bench = _load_script()
    config = tmp_path / "tiny.yaml"
    cfg = config_to_dict(tiny_config(fusion={"select": "none"}, data={"min_calib": 8}))
    config.write_text(yaml.safe_dump(cfg))
    argv = ["frr_check.py", "--data", str(synth_data), "--config", str(config), "--seeds", "0"]
    argv += ["--n", "3", "--draws", "20", "--out", str(tmp_path / "out")]
    old = sys.argv
    try:
        sys.argv = argv
        bench.main()
    finally:
        sys.argv = old
    doc = json.loads((tmp_path / "out" / "frr_check.json").read_text())
    (row,) = doc["seeds"]
    assert row["n_holdout"] == 4 and len(row["holdout_scores"]) == 4  # 20 % of the 20 training images
    assert row["n_threshold"] == len(row["threshold_scores"]) >= 2
    # the run's own threshold passes every threshold image (the rule sits above their largest score)
    assert row["threshold_frr"] == 0.0 and row["threshold"] > max(row["threshold_scores"])
    frr = np.mean(np.asarray(row["holdout_scores"]) >= row["threshold"])
    assert row["holdout_frr"] == pytest.approx(frr)
    assert {e["n"] for e in doc["emulated"]} == {3}
