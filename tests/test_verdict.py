"""Tests for engines.verdict: the one FAIL rule, shared by evaluation, parity and the edge."""

from __future__ import annotations

import numpy as np
import pytest

from engines.verdict import FAIL, PASS, UNKNOWN, fails, verdict


def test_a_score_at_the_threshold_fails() -> None:
    assert verdict(3.25, 3.25) == FAIL
    assert verdict(np.float32(3.25), 3.25) == FAIL
    assert verdict(np.nextafter(3.25, 0.0), 3.25) == PASS


def test_the_comparison_is_in_float64() -> None:
    """A float32 score just below a float64 threshold is PASS, though float32(threshold) equals it."""
    thr = 0.1  # not a float32 value: float32(0.1) > 0.1
    score = np.float32(0.1)
    assert float(score) > thr and verdict(score, thr) == FAIL
    thr2 = float(np.float32(0.1)) + 1e-12  # above the float32 score in float64
    assert verdict(score, thr2) == PASS
    assert np.float32(thr2) == score  # a float32 comparison would have said FAIL
    np.testing.assert_array_equal(fails(np.array([score], dtype=np.float32), thr2), [False])


@pytest.mark.parametrize("score", [float("nan"), float("inf"), -float("inf"), None])
def test_non_finite_or_missing_scores_are_unknown(score: float | None) -> None:
    assert verdict(score, 1.0) == UNKNOWN


def test_fails_agrees_with_verdict_everywhere() -> None:
    rng = np.random.default_rng(0)
    scores = rng.normal(1.0, 0.5, 2000).astype(np.float32)
    thr = float(np.median(scores))  # exactly one of the scores: at the threshold
    got = fails(scores, thr)
    want = np.array([verdict(s, thr) == FAIL for s in scores])
    np.testing.assert_array_equal(got, want)
    assert got.sum() == 1000


def test_evaluation_uses_the_same_rule() -> None:
    from trainer.evaluate.metrics import rates_at_threshold

    scores = np.array([0.5, 1.0, 1.5], dtype=np.float32)
    labels = np.array([0, 0, 1])
    r = rates_at_threshold(scores, labels, 1.0)  # the good part at exactly 1.0 is a false reject
    assert r["n_false_reject"] == 1 and r["n_escape"] == 0
