"""benchmarks/pixel_breakdown.py: per-defect-type pixel metrics against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import load_benchmark


def test_each_type_is_pooled_with_the_good_images_and_weighed_by_its_pixels() -> None:
    bench = load_benchmark("pixel_breakdown.py", "bench_pixel_breakdown")
    good = np.array([[0.0, 1.0], [2.0, 3.0]])
    # "spot": one defect pixel (score 5) above every other pixel
    spot = np.array([[5.0, 0.5], [0.5, 0.5]])
    spot_mask = np.array([[True, False], [False, False]])
    # "area": three defect pixels at a low level (1.5): above half of the good image's pixels, and in
    # their own image above the one normal pixel (1.0)
    area = np.array([[1.5, 1.5], [1.5, 1.0]])
    area_mask = np.array([[True, True], [True, False]])
    maps = [good, spot, area]
    masks = [np.zeros((2, 2), bool), spot_mask, area_mask]
    out = bench.type_breakdown(maps, masks, ["good", "spot", "area"])

    assert out["spot"]["share"] == pytest.approx(1 / 4) and out["area"]["share"] == pytest.approx(3 / 4)
    assert out["spot"]["area"] == pytest.approx(1 / 4) and out["area"]["area"] == pytest.approx(3 / 4)
    assert out["spot"]["n"] == 1 and out["area"]["n"] == 1 and out["all"]["n"] == 3
    # spot with the good image: the defect pixel (5) beats all 7 normal pixels
    assert out["spot"]["pixel_auroc"] == pytest.approx(1.0)
    assert out["spot"]["within_image_auroc"] == pytest.approx(1.0)
    # area with the good image: normal pixels 0, 1, 2, 3 and 1.0; each defect pixel (1.5) beats 3 of 5
    assert out["area"]["pixel_auroc"] == pytest.approx(3 / 5)
    assert out["area"]["within_image_auroc"] == pytest.approx(1.0)
    # all together, normal pixels 0, 1, 2, 3, 0.5 x 3, 1.0: the spot beats 8 of 8, each area pixel 6 of 8
    assert out["all"]["pixel_auroc"] == pytest.approx((8 + 3 * 6) / (4 * 8))
    # the pooled value sits below both types' own within-image separation: levels differ between images
    assert out["all"]["pixel_auroc"] < out["area"]["within_image_auroc"]


def test_escapes_are_counted_per_type_with_the_products_verdict_rule() -> None:
    bench = load_benchmark("pixel_breakdown.py", "bench_pixel_breakdown")
    scores = [0.1, 0.9, 1.0, 0.5, 2.0, 0.99]
    types = ["good", "good", "crack", "crack", "uneven", "uneven"]
    out = bench.escapes_by_type(scores, types, threshold=1.0)
    # score >= threshold fails: 1.0 fails, 0.99 passes
    assert out["good"] == {"n": 2, "failed": 0, "rate": 0.0}
    assert out["crack"] == {"n": 2, "passed": 1, "rate": 0.5}
    assert out["uneven"] == {"n": 2, "passed": 1, "rate": 0.5}
    assert bench.escapes_by_type(scores, types, threshold=0.5)["good"]["failed"] == 1
