"""benchmarks/split_mix_diag.py: the (score mix, map mix) pairs from per-mix fold metrics, hand-computed."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import load_benchmark


def _terms(image: list[float], pixel: list[float], aupro: list[float]) -> list[dict[str, float]]:
    return [
        {"image_auroc": i, "pixel_auroc": p, "aupro": a, "objective": i + p + a}
        for i, p, a in zip(image, pixel, aupro, strict=True)
    ]


def test_pairs_add_the_score_mixs_image_term_to_the_map_mixs_map_terms() -> None:
    bench = load_benchmark("split_mix_diag.py", "bench_split_mix_diag")
    # mix 0 (bank alone) separates images better, mix 0.5 localises better; three folds each
    rows = [
        {"cos_weight": 0.0, "image_auroc": 0.9, "pixel_auroc": 0.8, "aupro": 0.6},
        {"cos_weight": 0.5, "image_auroc": 0.7, "pixel_auroc": 0.85, "aupro": 0.75},
    ]
    terms = [
        _terms([0.9, 0.8, 1.0], [0.8, 0.8, 0.8], [0.6, 0.5, 0.7]),
        _terms([0.7, 0.6, 0.8], [0.85, 0.9, 0.8], [0.75, 0.7, 0.8]),
    ]
    pairs = {(p["score_mix"], p["map_mix"]): p for p in bench.pair_table(rows, terms, own=0)}
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
