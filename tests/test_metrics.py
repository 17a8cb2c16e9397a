"""Tests for trainer.evaluate.metrics: against scikit-learn, hand-computed cases and a brute-force AUPRO."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from sklearn import metrics as skm

from trainer.evaluate import metrics as M

TINY_SCORES = [0.1, 0.4, 0.35, 0.8]
TINY_LABELS = [0, 0, 1, 1]


def _random_tied(seed: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < 0.3).astype(np.int64)
    labels[:2] = [0, 1]
    scores = np.round(rng.normal(size=n) + labels, 1).astype(np.float32)  # rounding makes many ties
    return scores, labels


# ---------------------------------------------------------------- AUROC / AP / ROC curve


def test_tiny_hand_computed() -> None:
    assert M.roc_auc(TINY_SCORES, TINY_LABELS) == pytest.approx(0.75)
    assert M.average_precision(TINY_SCORES, TINY_LABELS) == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)


def test_ties_count_half() -> None:
    # One pair tied, one pair ordered correctly: (1 + 0.5) / 2.
    assert M.roc_auc([0.5, 0.5, 0.1, 0.9], [0, 1, 0, 1]) == pytest.approx(0.875)
    assert M.roc_auc([1.0, 1.0, 1.0], [0, 1, 1]) == pytest.approx(0.5)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_auroc_ap_match_sklearn_with_ties(seed: int) -> None:
    scores, labels = _random_tied(seed, 300 + 97 * seed)
    assert M.roc_auc(scores, labels) == pytest.approx(skm.roc_auc_score(labels, scores), abs=1e-12)
    assert M.average_precision(scores, labels) == pytest.approx(
        skm.average_precision_score(labels, scores), abs=1e-12
    )


def test_auroc_float32_large_matches_sklearn() -> None:
    rng = np.random.default_rng(5)
    labels = rng.random(200_000) < 0.05
    scores = (rng.random(200_000) + 0.3 * labels).astype(np.float32)
    assert M.roc_auc(scores, labels) == pytest.approx(skm.roc_auc_score(labels, scores), abs=1e-10)
    assert M.average_precision(scores, labels) == pytest.approx(
        skm.average_precision_score(labels, scores), abs=1e-9
    )


def test_accepts_bool_labels_and_2d_input() -> None:
    scores, labels = _random_tied(7, 120)
    expected = M.roc_auc(scores, labels)
    assert M.roc_auc(scores.reshape(10, 12), labels.astype(bool).reshape(10, 12)) == pytest.approx(expected)


@pytest.mark.parametrize("seed", [0, 1])
def test_roc_curve_matches_sklearn(seed: int) -> None:
    scores, labels = _random_tied(seed, 400)
    curve = M.roc_curve(scores, labels)
    fpr, tpr, thr = skm.roc_curve(labels, scores, drop_intermediate=False)
    np.testing.assert_allclose(curve["fpr"], fpr)
    np.testing.assert_allclose(curve["tpr"], tpr)
    assert np.isinf(curve["thresholds"][0])
    np.testing.assert_allclose(curve["thresholds"][1:], thr[1:])


def test_roc_curve_subsampled_keeps_endpoints_and_area() -> None:
    rng = np.random.default_rng(3)
    labels = rng.random(100_000) < 0.2
    scores = (rng.normal(size=100_000) + labels).astype(np.float32)
    curve = M.roc_curve(scores, labels, max_points=500)
    fpr, tpr = curve["fpr"], curve["tpr"]
    assert 100 < fpr.size <= 500
    assert (fpr[0], tpr[0]) == (0.0, 0.0)
    assert (fpr[-1], tpr[-1]) == (1.0, 1.0)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    assert np.all(np.diff(curve["thresholds"]) < 0)
    area = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1])) / 2)
    assert area == pytest.approx(M.roc_auc(scores, labels), abs=1e-3)


def test_one_class_raises() -> None:
    with pytest.raises(ValueError, match="only one class"):
        M.roc_auc([0.1, 0.2, 0.3], [0, 0, 0])
    with pytest.raises(ValueError, match="only one class"):
        M.roc_curve([0.1, 0.2], [1, 1])
    with pytest.raises(ValueError, match="defective"):
        M.average_precision([0.1, 0.2], [0, 0])
    assert M.average_precision([0.1, 0.2], [1, 1]) == 1.0


def test_input_validation() -> None:
    with pytest.raises(ValueError, match="2 non-finite"):
        M.roc_auc([0.1, np.nan, np.inf, 0.3], [0, 1, 0, 1])
    with pytest.raises(ValueError, match="differ in length"):
        M.roc_auc([0.1, 0.2, 0.3], [0, 1])
    with pytest.raises(ValueError, match="0 \\(good\\) or 1"):
        M.roc_auc([0.1, 0.2, 0.3], [0, 1, 2])
    with pytest.raises(ValueError, match="empty"):
        M.roc_auc([], [])


# ---------------------------------------------------------------- F1 and rates


def test_f1_max_hand_computed() -> None:
    # Threshold 0.8: tp 1, fp 0, fn 1 -> F1 2/3; threshold 0.35: tp 2, fp 1, fn 0 -> F1 0.8.
    res = M.f1_max(TINY_SCORES, TINY_LABELS)
    assert res["f1"] == pytest.approx(0.8)
    assert res["threshold"] == pytest.approx(0.35)
    assert res["precision"] == pytest.approx(2 / 3)
    assert res["recall"] == pytest.approx(1.0)


def test_f1_max_prefers_highest_threshold_on_ties() -> None:
    # Threshold 4: F1 2/3; threshold 1: tp 2, fp 2 -> F1 2/3 as well.
    res = M.f1_max([4.0, 3.0, 2.0, 1.0], [1, 0, 0, 1])
    assert res["f1"] == pytest.approx(2 / 3)
    assert res["threshold"] == 4.0


def test_f1_max_matches_bruteforce() -> None:
    scores, labels = _random_tied(11, 250)
    best = max(skm.f1_score(labels, scores >= t) for t in np.unique(scores))
    assert M.f1_max(scores, labels)["f1"] == pytest.approx(best)


def test_rates_at_threshold_hand_computed() -> None:
    scores = [0.1, 0.5, 0.7, 0.2, 0.6, 0.9]
    labels = [0, 0, 0, 1, 1, 1]
    res = M.rates_at_threshold(scores, labels, 0.6)  # score == threshold is FAIL
    assert res == {
        "false_reject_rate": pytest.approx(1 / 3),
        "escape_rate": pytest.approx(1 / 3),
        "n_good": 3,
        "n_defective": 3,
        "n_false_reject": 1,
        "n_escape": 1,
    }
    low = M.rates_at_threshold(scores, labels, 0.0)
    assert (low["false_reject_rate"], low["escape_rate"]) == (1.0, 0.0)
    high = M.rates_at_threshold(scores, labels, np.inf)
    assert (high["false_reject_rate"], high["escape_rate"]) == (0.0, 1.0)


def test_rates_empty_class_is_zero() -> None:
    res = M.rates_at_threshold([0.1, 0.9], [0, 0], 0.5)
    assert res["escape_rate"] == 0.0 and res["n_defective"] == 0
    assert res["false_reject_rate"] == 0.5
    res = M.rates_at_threshold([0.1, 0.9], [1, 1], 0.5)
    assert res["false_reject_rate"] == 0.0 and res["escape_rate"] == 0.5


def test_rates_float32_compare_like_float64() -> None:
    s32 = np.array([0.3], dtype=np.float32)
    exact = float(s32[0])
    assert M.rates_at_threshold(s32, [0], exact)["n_false_reject"] == 1
    assert M.rates_at_threshold(s32, [0], float(np.nextafter(exact, 1.0)))["n_false_reject"] == 0
    assert M.rates_at_threshold(s32, [0], 1e300)["n_false_reject"] == 0
    assert M.rates_at_threshold(s32, [0], -1e300)["n_false_reject"] == 1
    with pytest.raises(ValueError, match="NaN"):
        M.rates_at_threshold(s32, [0], float("nan"))


# ---------------------------------------------------------------- AUPRO


def _aupro_reference(maps: list[np.ndarray], masks: list[np.ndarray], fpr_limit: float = 0.3) -> float:
    """Brute force: every distinct score is a threshold, ties move the curve linearly."""
    values = np.unique(np.concatenate([m.ravel() for m in maps]))[::-1]
    normal = np.concatenate([m[k == 0] for m, k in zip(maps, masks, strict=True)])
    regions = []
    for m, k in zip(maps, masks, strict=True):
        n, comp = cv2.connectedComponents((k != 0).astype(np.uint8), connectivity=8)
        regions += [m[comp == r] for r in range(1, n)]
    fpr = [0.0] + [float(np.mean(normal >= t)) for t in values]
    pro = [0.0] + [float(np.mean([np.mean(r >= t) for r in regions])) for t in values]
    i = int(np.searchsorted(fpr, fpr_limit, side="right"))
    x, y = fpr[:i], pro[:i]
    if i < len(fpr):
        x.append(fpr_limit)
        y.append(float(np.interp(fpr_limit, [fpr[i - 1], fpr[i]], [pro[i - 1], pro[i]])))
    return float(np.sum(np.diff(x) * (np.array(y[1:]) + np.array(y[:-1]))) / 2 / fpr_limit)


def _random_set(
    seed: int, n_images: int = 6, tied: bool = False
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    maps, masks = [], []
    for i in range(n_images):
        h, w = (int(v) for v in rng.integers(10, 24, size=2))
        mask = np.zeros((h, w), dtype=np.uint8)
        if i > 0:
            for _ in range(int(rng.integers(1, 4))):
                y0, x0 = int(rng.integers(0, h - 4)), int(rng.integers(0, w - 4))
                mask[y0 : y0 + int(rng.integers(1, 5)), x0 : x0 + int(rng.integers(1, 5))] = 255
        amap = rng.normal(size=(h, w)) + 1.2 * (mask > 0)
        if tied:
            amap = np.round(amap, 1)
        maps.append(amap.astype(np.float32))
        masks.append(mask)
    return maps, masks


def _two_region_mask() -> np.ndarray:
    mask = np.zeros((10, 10), dtype=bool)
    mask[1:3, 1:3] = True  # region A, 4 px
    mask[6:8, 6:8] = True  # region B, 4 px
    return mask


def test_aupro_perfect_map_is_one() -> None:
    mask = _two_region_mask()
    good = np.zeros((8, 12), dtype=bool)
    maps = [mask.astype(np.float32), np.zeros((8, 12), np.float32)]
    assert M.aupro(maps, [mask, good]) == pytest.approx(1.0)


def test_aupro_half_detected() -> None:
    # Region A scores above every normal pixel, region B below every normal pixel: PRO is 0.5 on [0, 1).
    mask = _two_region_mask()
    amap = np.zeros(mask.shape, dtype=np.float32)
    amap[1:3, 1:3] = 1.0
    amap[6:8, 6:8] = -1.0
    assert M.aupro([amap], [mask]) == pytest.approx(0.5)


@pytest.mark.parametrize("fpr_limit", [0.3, 0.1, 1.0])
def test_aupro_constant_map(fpr_limit: float) -> None:
    # All pixels tied: the curve is the straight line from (0, 0) to (1, 1), so the area up to L is L^2/2.
    mask = _two_region_mask()
    maps = [np.full(mask.shape, 0.7, np.float32), np.full((5, 5), 0.7, np.float32)]
    got = M.aupro(maps, [mask, np.zeros((5, 5), bool)], fpr_limit=fpr_limit)
    assert got == pytest.approx(fpr_limit / 2)


def test_aupro_uses_8_connectivity() -> None:
    # A diagonal pair is ONE region (half detected) plus a detected single pixel: PRO = (0.5 + 1) / 2.
    # With 4-connectivity it would be three regions: (1 + 0 + 1) / 3.
    mask = np.zeros((9, 9), dtype=bool)
    mask[1, 1] = mask[2, 2] = mask[6, 6] = True
    amap = np.zeros(mask.shape, dtype=np.float32)
    amap[1, 1] = amap[6, 6] = 1.0
    amap[2, 2] = -1.0
    assert M.aupro([amap], [mask]) == pytest.approx(0.75)


@pytest.mark.parametrize(("seed", "tied"), [(0, False), (1, True), (2, False), (3, True)])
def test_aupro_matches_bruteforce(seed: int, tied: bool) -> None:
    maps, masks = _random_set(seed, tied=tied)
    assert M.aupro(maps, masks) == pytest.approx(_aupro_reference(maps, masks), abs=1e-9)
    assert M.aupro(maps, masks, fpr_limit=0.05) == pytest.approx(
        _aupro_reference(maps, masks, fpr_limit=0.05), abs=1e-9
    )


def test_aupro_coarse_grid_is_close() -> None:
    maps, masks = _random_set(4, n_images=20)
    exact = M.aupro(maps, masks)
    assert M.aupro(maps, masks, num_fpr_points=100) == pytest.approx(exact, abs=5e-3)


def test_aupro_independent_of_image_order() -> None:
    maps, masks = _random_set(5, n_images=8)
    order = np.random.default_rng(0).permutation(len(maps))
    shuffled = M.aupro([maps[i] for i in order], [masks[i] for i in order])
    assert shuffled == pytest.approx(M.aupro(maps, masks), abs=1e-12)


def test_aupro_mask_encodings_agree() -> None:
    maps, masks = _random_set(6)
    ref = M.aupro(maps, masks)  # {0, 255}
    assert M.aupro(maps, [m > 0 for m in masks]) == pytest.approx(ref, abs=1e-12)
    assert M.aupro(maps, [(m > 0).astype(np.int32) for m in masks]) == pytest.approx(ref, abs=1e-12)
    assert M.aupro([m.astype(np.float64) for m in maps], masks) == pytest.approx(ref, abs=1e-9)


def test_aupro_empty_masks_count_as_normal_only() -> None:
    maps, masks = _random_set(7)
    extra_map = np.random.default_rng(1).normal(size=(12, 15)).astype(np.float32)
    with_empty = M.aupro([*maps, extra_map], [*masks, np.zeros((12, 15), np.uint8)])
    with_none = M.aupro([*maps, extra_map], [*masks, None])
    assert 0.0 <= with_empty <= 1.0
    assert with_none == pytest.approx(with_empty)
    assert with_empty == pytest.approx(
        _aupro_reference([*maps, extra_map], [*masks, np.zeros((12, 15), np.uint8)]), abs=1e-9
    )


def test_aupro_errors() -> None:
    maps = [np.zeros((4, 4), np.float32), np.ones((3, 5), np.float32)]
    empty = [np.zeros((4, 4), bool), np.zeros((3, 5), bool)]
    with pytest.raises(ValueError, match="without defect regions"):
        M.aupro(maps, empty)
    with pytest.raises(ValueError, match="shape"):
        M.aupro(maps, [np.zeros((4, 4), bool), np.zeros((5, 3), bool)])
    with pytest.raises(ValueError, match="2 anomaly maps but 1 masks"):
        M.aupro(maps, empty[:1])
    bad = [maps[0].copy(), maps[1]]
    bad[0][0, :2] = np.nan
    with pytest.raises(ValueError, match="2 non-finite"):
        M.aupro(bad, empty)
    with pytest.raises(ValueError, match="fpr_limit"):
        M.aupro(maps, [np.ones((4, 4), bool), empty[1]], fpr_limit=0.0)


def test_pixel_metrics_equal_flattened() -> None:
    maps, masks = _random_set(8, tied=True)
    res = M.pixel_metrics(maps, masks)
    flat_scores = np.concatenate([m.ravel() for m in maps])
    flat_labels = np.concatenate([(k > 0).ravel() for k in masks])
    assert res["pixel_auroc"] == pytest.approx(skm.roc_auc_score(flat_labels, flat_scores), abs=1e-12)
    assert res["pixel_ap"] == pytest.approx(skm.average_precision_score(flat_labels, flat_scores), abs=1e-12)
    assert res["aupro"] == pytest.approx(M.aupro(maps, masks), abs=1e-12)
    assert all(isinstance(v, float) for v in res.values())


# ---------------------------------------------------------------- image metrics


def test_image_metrics_tiny() -> None:
    scores = [0.1, 0.2, 0.3, 0.25, 0.9, 0.05, 0.15]
    labels = [0, 0, 0, 1, 1, 1, 1]
    types = ["good", "good", "good", "scratch", "scratch", "crack", "crack"]
    res = M.image_metrics(scores, labels, 0.22, types)
    assert list(res["per_defect_image_auroc"]) == ["crack", "scratch"]
    # scratch: 0.25 beats 2 of 3 good, 0.9 beats 3 -> 5/6; crack: only 0.15 > 0.1 of 6 pairs -> 1/6.
    assert res["per_defect_image_auroc"]["scratch"] == pytest.approx(5 / 6)
    assert res["per_defect_image_auroc"]["crack"] == pytest.approx(1 / 6)
    assert res["image_auroc"] == pytest.approx(skm.roc_auc_score(labels, scores))
    assert res["image_ap"] == pytest.approx(skm.average_precision_score(labels, scores))
    assert res["image_f1_max"] == pytest.approx(M.f1_max(scores, labels)["f1"])
    # At 0.22: good 0.3 FAILs (1/3); defective 0.05 and 0.15 PASS (2/4).
    assert res["false_reject_rate"] == pytest.approx(1 / 3)
    assert res["escape_rate"] == pytest.approx(0.5)
    assert res["threshold"] == 0.22
    assert res["n_test_images"] == 7
    assert (res["n_good"], res["n_defective"]) == (3, 4)


def test_image_metrics_rejects_inconsistent_types() -> None:
    with pytest.raises(ValueError, match="contradicts"):
        M.image_metrics([0.1, 0.9], [0, 1], 0.5, ["good", "good"])
    with pytest.raises(ValueError, match="defect_types differ in length"):
        M.image_metrics([0.1, 0.9], [0, 1], 0.5, ["good"])
