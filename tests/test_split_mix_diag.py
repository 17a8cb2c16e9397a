"""benchmarks/split_mix_diag.py: each (score mix, map mix) pair's paired difference to the run's own mix,
hand-computed."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import load_benchmark


def _row(score: float, mapped: float, image: float, pixel: float, aupro: float) -> dict[str, float]:
    return {
        "cos_weight": mapped,
        "score_cos_weight": score,
        "image_auroc": image,
        "pixel_auroc": pixel,
        "aupro": aupro,
        "objective": image + pixel + aupro,
    }


def test_pairs_are_compared_with_the_runs_own_mix_fold_by_fold() -> None:
    bench = load_benchmark("split_mix_diag.py", "bench_split_mix_diag")
    # mix 0 (bank alone) separates images better, mix 0.5 localises better; three folds each, as
    # rank_mixes gives them: a pair's image term from its score mix, its pixel terms from its map mix
    image = {0.0: [0.9, 0.8, 1.0], 0.5: [0.7, 0.6, 0.8]}
    maps = {0.0: [0.8 + 0.6, 0.8 + 0.5, 0.8 + 0.7], 0.5: [0.85 + 0.75, 0.9 + 0.7, 0.8 + 0.8]}
    whole = {0.0: (0.9, 0.8, 0.6), 0.5: (0.7, 0.85, 0.75)}
    pairs_in = [(0.0, 0.0), (0.5, 0.5), (0.5, 0.0), (0.0, 0.5)]
    rows = [_row(s, a, whole[s][0], whole[a][1], whole[a][2]) for s, a in pairs_in]
    folds = [[i + m for i, m in zip(image[s], maps[a], strict=True)] for s, a in pairs_in]
    pairs = {(p["score_mix"], p["map_mix"]): p for p in bench.pair_table(rows, folds, own=0)}
    assert len(pairs) == 4
    split = pairs[(0.0, 0.5)]
    assert (split["image_auroc"], split["pixel_auroc"], split["aupro"]) == (0.9, 0.85, 0.75)
    assert split["objective"] == pytest.approx(2.5)
    # per fold: 2.5 - 2.3 = 0.2, 2.4 - 2.1 = 0.3, 2.6 - 2.5 = 0.1
    assert split["diff"] == pytest.approx(0.2)
    assert split["se"] == pytest.approx(np.std([0.2, 0.3, 0.1], ddof=1) / np.sqrt(3))
    assert pairs[(0.0, 0.0)]["diff"] == 0.0 and pairs[(0.0, 0.0)]["se"] == 0.0
    worse = pairs[(0.5, 0.0)]  # the worse image term with the worse map terms
    assert worse["objective"] == pytest.approx(0.7 + 0.8 + 0.6) and worse["diff"] == pytest.approx(-0.2)
