"""Tests for trainer.calibrate: Student-t quantiles and the false-reject threshold."""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
import pytest

from trainer.calibrate import Calibration, calibrate, fit_threshold, student_t_quantile, summarize
from trainer.errors import DataError

# ---------------------------------------------------------------- Student t


@pytest.mark.parametrize(
    ("p", "dof", "expected"),
    [
        (0.99, 20, 2.528),
        (0.975, 5, 2.571),
        (0.99, 1, 31.82),
        (0.975, 2, 4.303),
        (0.99, 3, 4.541),  # the Cornish-Fisher start alone is 4.523 here
        (0.99, 4, 3.747),
        (0.95, 10, 1.812),
        (0.999, 5, 5.893),
        (0.99, 100, 2.364),
    ],
)
def test_student_t_quantile_known_values(p: float, dof: int, expected: float) -> None:
    assert student_t_quantile(p, dof) == pytest.approx(expected, abs=2e-3)


def test_student_t_quantile_large_dof_tends_to_normal() -> None:
    assert student_t_quantile(0.99, 100_000) == pytest.approx(2.326, abs=2e-3)
    assert student_t_quantile(0.99, 100_000) == pytest.approx(NormalDist().inv_cdf(0.99), abs=1e-4)
    # monotone: fewer degrees of freedom, heavier tail
    values = [student_t_quantile(0.99, d) for d in (1, 2, 3, 5, 10, 30, 1000)]
    assert values == sorted(values, reverse=True)


def test_student_t_quantile_symmetry_and_median() -> None:
    for dof in (1, 2, 3, 7, 50):
        assert student_t_quantile(0.5, dof) == pytest.approx(0.0, abs=1e-9)
        assert student_t_quantile(0.05, dof) == pytest.approx(-student_t_quantile(0.95, dof), abs=1e-9)
    with pytest.raises(ValueError):
        student_t_quantile(0.9, 0)


# ---------------------------------------------------------------- threshold


def test_conformal_threshold_for_many_scores() -> None:
    rng = np.random.default_rng(0)
    scores = rng.normal(1.0, 0.2, size=200)
    thr, rule = fit_threshold(scores, 0.01)
    assert rule == "conformal"
    frr = float(np.mean(scores >= thr))
    assert frr <= 0.01
    k = math.ceil(201 * 0.99)  # 199
    s = np.sort(scores)
    assert s[k - 1] < thr <= s[k]  # just above the k-th smallest: the k lowest pass
    assert frr == pytest.approx((200 - k) / 200)


def test_conformal_threshold_with_ties() -> None:
    scores = np.array([0.5] * 150 + [1.0] * 50)
    thr, rule = fit_threshold(scores, 0.3)
    assert rule == "conformal"
    assert float(np.mean(scores >= thr)) <= 0.3


def test_gaussian_bound_for_few_scores() -> None:
    rng = np.random.default_rng(1)
    scores = rng.normal(5.0, 1.0, size=21)
    thr, rule = fit_threshold(scores, 0.01)
    assert rule == "gaussian_bound"
    assert thr > scores.max()
    n = 21
    bound = scores.mean() + student_t_quantile(0.99, n - 1) * scores.std(ddof=1) * math.sqrt(1 + 1 / n)
    assert thr == pytest.approx(max(bound, scores.max()), rel=1e-6)


def test_rule_switches_at_the_conformal_limit() -> None:
    rng = np.random.default_rng(2)
    # k = ceil((n + 1) * 0.99) <= n  <=>  n >= 99
    assert fit_threshold(rng.normal(size=98), 0.01)[1] == "gaussian_bound"
    assert fit_threshold(rng.normal(size=99), 0.01)[1] == "conformal"


def test_gaussian_bound_false_reject_rate_on_fresh_samples() -> None:
    """For normal good scores the bound is a 99 % prediction bound: FRR on new parts ~<= 1 %."""
    rng = np.random.default_rng(3)
    norm = NormalDist()
    calib = rng.normal(3.0, 0.5, size=(2000, 21))
    fits = [fit_threshold(c, 0.01) for c in calib]
    assert {rule for _, rule in fits} == {"gaussian_bound"}
    thr = np.array([t for t, _ in fits])

    def exact_frr(t: np.ndarray) -> float:
        """Mean exact FRR of thresholds ``t`` on fresh N(3, 0.5^2) scores."""
        return float(np.mean([1.0 - norm.cdf((x - 3.0) / 0.5) for x in t]))

    # an exact 99 % prediction bound: E[FRR] = 1 % (slightly less: never below the max score)
    assert 0.008 < exact_frr(thr) <= 0.0105
    # the same by simulation: 500 fresh good parts per calibration set
    fresh = rng.normal(3.0, 0.5, size=(2000, 500))
    assert 0.008 < float(np.mean(fresh >= thr[:, None])) < 0.0115
    # the plug-in normal quantile (no t factor, no sqrt(1 + 1/n)) rejects clearly more
    plug_in = calib.mean(1) + norm.inv_cdf(0.99) * calib.std(1, ddof=1)
    assert exact_frr(plug_in) > 0.013


def test_gaussian_bound_with_small_n() -> None:
    rng = np.random.default_rng(4)
    norm = NormalDist()
    frr = [1.0 - norm.cdf(fit_threshold(rng.normal(size=5), 0.01)[0]) for _ in range(4000)]
    assert float(np.mean(frr)) == pytest.approx(0.01, abs=0.0015)


@pytest.mark.parametrize("scores", [[], [1.0], np.array([[2.0]])])
def test_too_few_scores_raise(scores: object) -> None:
    with pytest.raises(DataError, match="cannot calibrate"):
        fit_threshold(np.asarray(scores, dtype=float), 0.01)


def test_constant_scores_raise() -> None:
    with pytest.raises(DataError, match="same score"):
        fit_threshold(np.full(10, 0.7), 0.01)
    with pytest.raises(DataError, match="same score"):
        fit_threshold(np.full(300, 0.7), 0.01)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_scores_raise(bad: float) -> None:
    scores = np.linspace(0, 1, 30)
    scores[3] = bad
    with pytest.raises(DataError, match="not finite"):
        fit_threshold(scores, 0.01)


def test_invalid_target_raises() -> None:
    with pytest.raises(ValueError):
        fit_threshold(np.linspace(0, 1, 10), 0.0)


def test_calibrate_record() -> None:
    rng = np.random.default_rng(5)
    scores = rng.normal(size=300)
    pixels = rng.random(5000)
    cal = calibrate(scores, pixels, 0.01)
    assert cal.rule == "conformal"
    assert cal.n_images == 300
    assert cal.calib_frr <= 0.01
    assert cal.image_scores["max"] == pytest.approx(scores.max())
    assert cal.pixel_scores["p50"] == pytest.approx(np.median(pixels))
    assert Calibration.from_dict(cal.to_dict()) == cal
    stats = summarize(np.arange(1001, dtype=float))
    assert stats["p999"] == pytest.approx(999.0)
    assert stats["mean"] == pytest.approx(500.0)
