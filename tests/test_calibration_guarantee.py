"""Statistical tests of the false-reject guarantee of the calibration (trainer/calibrate.py).

Generated good-part scores go through the same steps as a real calibration: a fitting step adapts the
model to its images (here: it picks, among candidate cue directions, the one under which its images look
most normal, as a per-part selection does), then the threshold is set. Over many simulated calibrations
the mean false-reject rate on fresh good parts must stay at or below the target when the roles are
split (``split_roles``), and it measurably does not when the same images fit the model and set the
threshold (the behaviour before the split).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from trainer.calibrate import Calibration, calibrate, conformal_min, fit_threshold, split_roles
from trainer.errors import DataError

ALPHA = 0.05
N_CALIB = 300  # 150 threshold images: k = ceil(151 * 0.95) = 144 <= 150, the conformal rule
SIMS = 200
FRESH = 4000


def _images(rng: np.random.Generator, n: int) -> np.ndarray:
    """``[n, pixels, cues]``: per-pixel noise plus a per-image offset (images differ as a whole)."""
    return rng.normal(size=(n, 16, 3)) + rng.normal(scale=0.5, size=(n, 1, 3))


def _scores(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    return (x @ w).max(1)  # image score = map maximum


def _simulate(shared: bool, seed: int = 0) -> tuple[float, set[str]]:
    rng = np.random.default_rng(seed)
    directions = rng.normal(size=(40, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)

    def select(x: np.ndarray) -> np.ndarray:
        q = [np.quantile(_scores(x, w), 1 - ALPHA) for w in directions]
        return directions[int(np.argmin(q))]

    frr, rules = [], set()
    for sim in range(SIMS):
        calib, fresh = _images(rng, N_CALIB), _images(rng, FRESH)
        if shared:
            fit_part = thr_part = calib
        else:
            fit_idx, thr_idx = split_roles(N_CALIB, 0.5, sim)
            fit_part, thr_part = calib[fit_idx], calib[thr_idx]
        w = select(fit_part)
        threshold, rule = fit_threshold(_scores(thr_part, w), ALPHA)
        rules.add(rule)
        frr.append(float(np.mean(_scores(fresh, w) >= threshold)))
    return float(np.mean(frr)), rules


def test_split_roles_keep_the_conformal_guarantee() -> None:
    frr, rules = _simulate(shared=False)
    assert rules == {"conformal"}
    # E[FRR] = 1 - k / (n + 1) = 0.046 <= 0.05; the Monte-Carlo error of the mean is ~0.001
    assert frr <= ALPHA + 0.003
    assert frr > ALPHA - 0.01  # and the threshold is not needlessly loose


def test_shared_roles_break_it() -> None:
    """The same images fitting the model and setting the threshold: good parts are rejected more often
    than promised (this is what the split fixes; the test shows the simulation can see it)."""
    frr, _ = _simulate(shared=True)
    assert frr > ALPHA + 0.015


def test_gaussian_bound_holds_for_normal_scores_only() -> None:
    """Below the conformal limit the bound's 1 - alpha promise rests on normal scores: it holds for them
    and is measurably broken by heavy right tails (lognormal), as the calibration docs state; the
    distribution-free 1 / (n + 1) bound still holds."""
    rng = np.random.default_rng(7)
    n, target = 38, 0.01  # e.g. half of 76 calibration images: too few for a conformal 1 % quantile
    normal = rng.normal(2.0, 0.4, size=(3000, n))
    thr = np.array([fit_threshold(c, target)[0] for c in normal])
    assert fit_threshold(normal[0], target)[1] == "gaussian_bound"
    exact = float(np.mean(stats.norm.sf(thr, loc=2.0, scale=0.4)))
    assert exact <= target + 0.0015
    sigma = 0.8
    skewed = rng.lognormal(0.0, sigma, size=(3000, n))
    thr = np.array([fit_threshold(c, target)[0] for c in skewed])
    skewed_frr = float(np.mean(stats.lognorm.sf(thr, s=sigma)))
    assert skewed_frr > target + 0.003
    # what still holds for any distribution: never below the largest of n scores -> E[FRR] <= 1 / (n + 1)
    assert skewed_frr <= 1.0 / (n + 1) + 0.001


def test_split_roles_are_disjoint_seeded_and_clamped() -> None:
    fit, thr = split_roles(21, 0.5, 0)
    assert len(thr) == 11 and len(fit) == 10  # round(0.5 * 21) half up: 11 threshold images
    assert not set(fit) & set(thr) and sorted([*fit, *thr]) == list(range(21))
    again = split_roles(21, 0.5, 0)
    assert np.array_equal(again[0], fit) and np.array_equal(again[1], thr)
    assert not np.array_equal(split_roles(21, 0.5, 1)[1], thr)
    for n in (4, 5, 9):
        f, t = split_roles(n, 0.9, 0)
        assert len(f) >= 2 and len(t) >= 2
    with pytest.raises(DataError, match="at least 4"):
        split_roles(3, 0.5, 0)
    with pytest.raises(ValueError):
        split_roles(10, 1.0, 0)


def test_threshold_role_grows_to_the_conformal_minimum_where_the_fit_role_allows() -> None:
    assert [conformal_min(a) for a in (0.01, 0.02, 0.05, 0.1)] == [99, 49, 19, 9]
    for alpha in (0.01, 0.02, 0.05, 0.1, 0.013):
        m = conformal_min(alpha)  # conformal with m threshold images, not with m - 1
        assert math.ceil((m + 1) * (1 - alpha)) <= m and math.ceil(m * (1 - alpha)) > m - 1
    # magnetic tile's 152 calibration images: 99 set the threshold (a 1 % conformal rule), 53 fit
    fit, thr = split_roles(152, 0.5, 0, min_threshold=99, min_fit=40)
    assert len(thr) == 99 and len(fit) == 53 and sorted([*fit, *thr]) == list(range(152))
    assert fit_threshold(np.arange(99.0), 0.01)[1] == "conformal"
    # the half that the fraction alone gives is a subset of it (one seeded order)
    assert set(split_roles(152, 0.5, 0)[1]) <= set(thr)
    # the fit role keeps its minimum: 122 images -> 82 / 40; bottle's 42 and small parts are unchanged
    assert [len(r) for r in split_roles(122, 0.5, 0, 99, 40)] == [40, 82]
    for n in (42, 10, 4):
        assert [len(r) for r in split_roles(n, 0.5, 3, 99, 40)] == [len(r) for r in split_roles(n, 0.5, 3)]


def test_a_part_with_enough_good_images_gets_the_conformal_rule_by_default() -> None:
    from conftest import tiny_config

    from trainer.train import calibration_roles

    fit, thr = calibration_roles(tiny_config(), 152)
    assert (len(fit), len(thr)) == (53, 99)
    fit, thr = calibration_roles(tiny_config(calibration={"min_threshold_images": 0}), 152)
    assert (len(fit), len(thr)) == (76, 76)
    fit, thr = calibration_roles(tiny_config(calibration={"target_frr": 0.05}), 152)
    assert (len(fit), len(thr)) == (76, 76)  # 19 images reach 5 %: the fraction already gives more


def test_calibration_record_states_its_roles_and_reads_old_records() -> None:
    rng = np.random.default_rng(5)
    cal = calibrate(rng.normal(size=150), rng.random(100), 0.05, n_fit_images=150)
    assert cal.roles == "split" and cal.n_fit_images == 150 and "conformal" in cal.guarantee
    assert Calibration.from_dict(cal.to_dict()) == cal
    old = {k: v for k, v in cal.to_dict().items() if k not in ("roles", "n_fit_images", "guarantee")}
    assert Calibration.from_dict(old).roles == "shared"  # a record from before the split
    shared = calibrate(rng.normal(size=150), rng.random(100), 0.05)
    assert shared.roles == "shared" and shared.guarantee.startswith("none")
