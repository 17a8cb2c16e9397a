"""Anomaly-detection metrics on numpy arrays (no torch).

Conventions used throughout:

* a higher score means *more anomalous*;
* label ``1`` means defective, ``0`` means good (``bool`` labels are accepted too);
* a sample is predicted defective (FAIL) when ``score >= threshold``.

Every curve metric is computed from the sorted scores of each class (``O(N log N)`` time, ``O(N)``
memory, never ``N x N``), so they handle tens of millions of pixels. ``float32`` input stays ``float32``
(no ``float64`` copy of the whole array); other numeric inputs are converted to ``float64``.

Public functions return plain Python ``float``/``int`` values or dicts of them (``roc_curve`` returns
numpy arrays for plotting), so their results can be written to JSON directly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypedDict

import cv2
import numpy as np
import numpy.typing as npt

from engines.verdict import fails

__all__ = [
    "F1Max",
    "ImageMetrics",
    "PixelMetrics",
    "Rates",
    "aupro",
    "average_precision",
    "f1_max",
    "image_metrics",
    "pixel_metrics",
    "rates_at_threshold",
    "roc_auc",
    "roc_curve",
]

GOOD_TYPE = "good"
"""Defect type name of good (defect-free) images."""


class F1Max(TypedDict):
    """Result of :func:`f1_max`."""

    f1: float
    threshold: float
    precision: float
    recall: float


class Rates(TypedDict):
    """Result of :func:`rates_at_threshold`."""

    false_reject_rate: float
    escape_rate: float
    n_good: int
    n_defective: int
    n_false_reject: int
    n_escape: int


class PixelMetrics(TypedDict):
    """Result of :func:`pixel_metrics`."""

    pixel_auroc: float
    pixel_ap: float
    aupro: float


class ImageMetrics(TypedDict):
    """Result of :func:`image_metrics`."""

    image_auroc: float
    image_ap: float
    image_f1_max: float
    image_f1_max_threshold: float
    false_reject_rate: float
    escape_rate: float
    threshold: float
    n_test_images: int
    n_good: int
    n_defective: int
    per_defect_image_auroc: dict[str, float]


# --------------------------------------------------------------------------------------------------
# Input validation and the sorted-per-class representation
# --------------------------------------------------------------------------------------------------


def _as_scores(scores: npt.ArrayLike, name: str = "scores") -> np.ndarray:
    """Flattens ``scores`` to a 1-D float32/float64 array and checks that every value is finite."""
    arr = np.asarray(scores)
    if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
        raise ValueError(f"{name} must be real numbers, got dtype {arr.dtype}")
    if arr.dtype not in (np.float32, np.float64):
        arr = arr.astype(np.float64)
    arr = arr.reshape(-1)
    n_bad = arr.size - int(np.count_nonzero(np.isfinite(arr)))
    if n_bad:
        raise ValueError(f"{name} contain {n_bad} non-finite value(s) (NaN or inf) out of {arr.size}")
    return arr


def _as_labels(labels: npt.ArrayLike, n: int, name: str = "labels") -> np.ndarray:
    """Flattens ``labels`` to a 1-D bool array (True = defective) of length ``n``."""
    arr = np.asarray(labels).reshape(-1)
    if arr.size != n:
        raise ValueError(f"scores and {name} differ in length: {n} scores, {arr.size} {name}")
    if arr.dtype == np.bool_:
        return arr
    if not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"{name} must be 0 (good) / 1 (defective) or bool, got dtype {arr.dtype}")
    is_one = arr == 1
    n_bad = arr.size - int(np.count_nonzero(is_one | (arr == 0)))
    if n_bad:
        raise ValueError(f"{name} must be 0 (good) or 1 (defective); found {n_bad} other value(s)")
    return is_one


@dataclass(frozen=True)
class _SortedClasses:
    """Scores split by class, each sorted ascending (same dtype)."""

    pos: np.ndarray  # defective
    neg: np.ndarray  # good


def _split_sorted(scores: npt.ArrayLike, labels: npt.ArrayLike) -> _SortedClasses:
    s = _as_scores(scores)
    if s.size == 0:
        raise ValueError("scores are empty")
    y = _as_labels(labels, s.size)
    pos = s[y]
    pos.sort()
    neg = s[~y]
    neg.sort()
    return _SortedClasses(pos=pos, neg=neg)


def _require_both_classes(srt: _SortedClasses, what: str) -> None:
    if srt.pos.size == 0 or srt.neg.size == 0:
        present = "defective (1)" if srt.pos.size else "good (0)"
        raise ValueError(
            f"{what} is undefined when only one class is present: all {srt.pos.size + srt.neg.size} "
            f"labels are {present}; need at least one good and one defective sample"
        )


def _unique_sorted(a: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct values of a sorted 1-D array with the start index and size of each run of equal values."""
    if a.size == 0:
        empty = np.zeros(0, dtype=np.int64)
        return a[:0], empty, empty
    first = np.empty(a.size, dtype=bool)
    first[0] = True
    np.not_equal(a[1:], a[:-1], out=first[1:])
    starts = np.flatnonzero(first)
    counts = np.diff(np.append(starts, a.size))
    return a[starts], starts, counts


def _count_ge(sorted_arr: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Number of elements of ``sorted_arr`` that are ``>= v`` for each ``v`` in ``values`` (int64)."""
    return sorted_arr.size - np.searchsorted(sorted_arr, values, side="left").astype(np.int64)


def _auroc_sorted(srt: _SortedClasses) -> float:
    _require_both_classes(srt, "AUROC")
    n_pos, n_neg = srt.pos.size, srt.neg.size
    vals, _, counts = _unique_sorted(srt.pos)
    # Mann-Whitney U with ties counted 1/2, identical to the trapezoidal ROC area (sklearn).
    below = np.searchsorted(srt.neg, vals, side="left").astype(np.int64)
    below_or_tied = np.searchsorted(srt.neg, vals, side="right").astype(np.int64)
    u2 = int(np.dot(counts.astype(np.int64), below + below_or_tied))  # 2 * U, exact integer
    return u2 / (2.0 * n_pos * n_neg)


def _ap_sorted(srt: _SortedClasses) -> float:
    n_pos = srt.pos.size
    if n_pos == 0:
        raise ValueError("average precision is undefined without defective (label 1) samples")
    vals, starts, counts = _unique_sorted(srt.pos)
    # Recall only changes at the distinct defective scores; at each, precision counts all tied samples.
    tp = n_pos - starts.astype(np.int64)
    fp = _count_ge(srt.neg, vals)
    precision = tp / (tp + fp)
    return float(np.dot(counts, precision) / n_pos)


def _f1_sorted(srt: _SortedClasses) -> F1Max:
    n_pos = srt.pos.size
    if n_pos == 0:
        raise ValueError("F1 is undefined without defective (label 1) samples")
    # The best threshold for a given number of true positives is the lowest defective score reaching it,
    # so only the distinct defective scores need to be tried.
    vals, starts, _ = _unique_sorted(srt.pos)
    tp = n_pos - starts.astype(np.int64)
    fp = _count_ge(srt.neg, vals)
    fn = n_pos - tp
    f1 = 2.0 * tp / (2.0 * tp + fp + fn)
    best = vals.size - 1 - int(np.argmax(f1[::-1]))  # the highest threshold among equal maxima
    return {
        "f1": float(f1[best]),
        "threshold": float(vals[best]),
        "precision": float(tp[best] / (tp[best] + fp[best])),
        "recall": float(tp[best] / n_pos),
    }


# --------------------------------------------------------------------------------------------------
# Scalar score metrics
# --------------------------------------------------------------------------------------------------


def roc_auc(scores: npt.ArrayLike, labels: npt.ArrayLike) -> float:
    """Area under the ROC curve, exact, with ties handled as ``sklearn.metrics.roc_auc_score``.

    A defective/good pair with equal scores counts 1/2 (the trapezoidal area over tied groups).

    Args:
        scores: Shape ``(N,)`` (any shape is flattened), finite, higher = more anomalous. float32 is kept.
        labels: Shape ``(N,)``, 1/True = defective, 0/False = good.

    Returns:
        AUROC in ``[0, 1]``.

    Raises:
        ValueError: Only one class present, lengths differ, bad labels or non-finite scores.
    """
    return _auroc_sorted(_split_sorted(scores, labels))


def roc_curve(
    scores: npt.ArrayLike, labels: npt.ArrayLike, max_points: int | None = 2000
) -> dict[str, np.ndarray]:
    """ROC curve like ``sklearn.metrics.roc_curve(..., drop_intermediate=False)``.

    ``thresholds`` are the distinct scores in decreasing order preceded by ``inf`` (the point
    ``(0, 0)``); the last point is ``(1, 1)``. When there are more than ``max_points`` distinct scores,
    the thresholds are subsampled at evenly spaced quantiles of each class (so both ``fpr`` and ``tpr``
    are finely resolved), always keeping both endpoints; every returned point is exact.

    Args:
        scores: Shape ``(N,)``, finite, higher = more anomalous.
        labels: Shape ``(N,)``, 1/True = defective, 0/False = good.
        max_points: Upper bound on the number of returned points (``>= 4``), ``None`` for all.

    Returns:
        ``{"fpr", "tpr", "thresholds"}``: float64 arrays of equal length ``M``; ``fpr`` and ``tpr``
        are non-decreasing, ``thresholds`` decreasing. Point ``i`` predicts defective when
        ``score >= thresholds[i]``.

    Raises:
        ValueError: Only one class present, ``max_points < 4`` or invalid inputs.
    """
    if max_points is not None and max_points < 4:
        raise ValueError(f"max_points must be >= 4 or None, got {max_points}")
    srt = _split_sorted(scores, labels)
    _require_both_classes(srt, "the ROC curve")
    pos_vals = _unique_sorted(srt.pos)[0]
    neg_vals = _unique_sorted(srt.neg)[0]
    if max_points is None or pos_vals.size + neg_vals.size + 1 <= max_points:
        thr = np.union1d(pos_vals, neg_vals)
    else:
        per_class = (max_points - 1) // 2

        def quantiles(a: np.ndarray) -> np.ndarray:
            idx = np.unique(np.linspace(0, a.size - 1, min(per_class, a.size)).round().astype(np.int64))
            return a[idx]

        thr = np.union1d(quantiles(srt.pos), quantiles(srt.neg))  # contains the global minimum
    thr = thr[::-1]
    tps = _count_ge(srt.pos, thr)
    fps = _count_ge(srt.neg, thr)
    return {
        "fpr": np.concatenate([[0.0], fps / srt.neg.size]),
        "tpr": np.concatenate([[0.0], tps / srt.pos.size]),
        "thresholds": np.concatenate([[np.inf], thr.astype(np.float64)]),
    }


def average_precision(scores: npt.ArrayLike, labels: npt.ArrayLike) -> float:
    """Average precision, as ``sklearn.metrics.average_precision_score`` (step-wise, not interpolated).

    ``AP = sum_k (R_k - R_{k-1}) * P_k`` over the distinct score thresholds in decreasing order.

    Args:
        scores: Shape ``(N,)``, finite, higher = more anomalous.
        labels: Shape ``(N,)``, 1/True = defective, 0/False = good.

    Returns:
        AP in ``[0, 1]``; 1.0 when there are no good samples.

    Raises:
        ValueError: No defective samples, or invalid inputs.
    """
    return _ap_sorted(_split_sorted(scores, labels))


def f1_max(scores: npt.ArrayLike, labels: npt.ArrayLike) -> F1Max:
    """Best F1 score over all thresholds (``score >= threshold`` predicts defective).

    Args:
        scores: Shape ``(N,)``, finite, higher = more anomalous.
        labels: Shape ``(N,)``, 1/True = defective, 0/False = good.

    Returns:
        ``{"f1", "threshold", "precision", "recall"}`` at the best threshold. The threshold is one of the
        defective scores; among thresholds with equal F1 the highest is returned.

    Raises:
        ValueError: No defective samples, or invalid inputs.
    """
    return _f1_sorted(_split_sorted(scores, labels))


def rates_at_threshold(scores: npt.ArrayLike, labels: npt.ArrayLike, threshold: float) -> Rates:
    """False-reject and escape rates when ``score >= threshold`` means FAIL.

    The comparison is done in float64.

    Args:
        scores: Shape ``(N,)``, finite, higher = more anomalous.
        labels: Shape ``(N,)``, 1/True = defective, 0/False = good.
        threshold: Decision threshold (not NaN; ``inf`` passes everything).

    Returns:
        ``false_reject_rate`` (fraction of good samples that FAIL), ``escape_rate`` (fraction of
        defective samples that PASS), and the counts ``n_good``, ``n_defective``, ``n_false_reject``,
        ``n_escape``. A rate whose class is empty is defined as 0.0.

    Raises:
        ValueError: NaN threshold or invalid inputs.
    """
    thr = float(threshold)
    if math.isnan(thr):
        raise ValueError("threshold is NaN")
    s = _as_scores(scores)
    y = _as_labels(labels, s.size)
    fail = fails(s, thr)  # the product's one verdict rule (engines.verdict), also on the edge
    n_def = int(np.count_nonzero(y))
    n_good = int(y.size - n_def)
    n_false_reject = int(np.count_nonzero(fail & ~y))
    n_escape = int(np.count_nonzero(~fail & y))
    return {
        "false_reject_rate": n_false_reject / n_good if n_good else 0.0,
        "escape_rate": n_escape / n_def if n_def else 0.0,
        "n_good": n_good,
        "n_defective": n_def,
        "n_false_reject": n_false_reject,
        "n_escape": n_escape,
    }


# --------------------------------------------------------------------------------------------------
# Pixel-level metrics and AUPRO
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _PixelData:
    """All pixels of a test set, split for the pixel metrics."""

    normal: np.ndarray  # scores of mask-0 pixels, sorted ascending
    region: np.ndarray  # scores of mask pixels, sorted ascending
    region_tail: np.ndarray  # (len(region) + 1,): sum of 1/region_size over region[i:], 0 at the end
    n_regions: int


def _collect_pixels(
    anomaly_maps: Sequence[npt.ArrayLike], masks: Sequence[npt.ArrayLike | None]
) -> _PixelData:
    if len(anomaly_maps) != len(masks):
        raise ValueError(f"got {len(anomaly_maps)} anomaly maps but {len(masks)} masks")
    if len(anomaly_maps) == 0:
        raise ValueError("no anomaly maps given")
    maps: list[np.ndarray] = []
    bin_masks: list[np.ndarray] = []
    n_bad = n_bad_maps = 0
    for i, (amap_in, mask_in) in enumerate(zip(anomaly_maps, masks, strict=True)):
        amap = np.asarray(amap_in)
        if amap.ndim != 2:
            raise ValueError(f"anomaly map {i} must be 2-D (H, W), got shape {amap.shape}")
        if amap.dtype == np.bool_ or not np.issubdtype(amap.dtype, np.number) or np.iscomplexobj(amap):
            raise ValueError(f"anomaly map {i} must hold real numbers, got dtype {amap.dtype}")
        if mask_in is None:
            mask = np.zeros(amap.shape, dtype=bool)
        else:
            mask = np.asarray(mask_in)
            if mask.shape != amap.shape:
                raise ValueError(
                    f"mask {i} has shape {mask.shape} but its anomaly map has shape {amap.shape}"
                )
            mask = mask != 0
        bad = amap.size - int(np.count_nonzero(np.isfinite(amap)))
        if bad:
            n_bad += bad
            n_bad_maps += 1
        maps.append(amap)
        bin_masks.append(mask)
    if n_bad:
        raise ValueError(
            f"anomaly maps contain {n_bad} non-finite value(s) (NaN or inf) "
            f"in {n_bad_maps} of {len(maps)} maps"
        )
    dtype = np.result_type(np.float32, *(m.dtype for m in maps))
    if dtype not in (np.float32, np.float64):
        dtype = np.dtype(np.float64)

    n_defect_px = [int(np.count_nonzero(m)) for m in bin_masks]
    n_normal = sum(m.size for m in bin_masks) - sum(n_defect_px)
    normal = np.empty(n_normal, dtype=dtype)
    region = np.empty(sum(n_defect_px), dtype=dtype)
    weights = np.empty(region.size, dtype=np.float64)
    n_regions = 0
    at_normal = at_region = 0
    for amap, mask, n_def in zip(maps, bin_masks, n_defect_px, strict=True):
        k = mask.size - n_def
        normal[at_normal : at_normal + k] = amap[~mask]
        at_normal += k
        if n_def == 0:
            continue
        n_labels, comp = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
        comp_in = comp[mask]
        sizes = np.bincount(comp_in, minlength=n_labels)
        region[at_region : at_region + n_def] = amap[mask]
        weights[at_region : at_region + n_def] = 1.0 / sizes[comp_in]
        at_region += n_def
        n_regions += n_labels - 1
    normal.sort()
    order = np.argsort(region, kind="stable")
    region = region[order]
    tail = np.zeros(region.size + 1, dtype=np.float64)
    tail[:-1] = np.cumsum(weights[order][::-1])[::-1]
    return _PixelData(normal=normal, region=region, region_tail=tail, n_regions=n_regions)


def _aupro_from_pixels(px: _PixelData, fpr_limit: float, num_fpr_points: int) -> float:
    if not 0.0 < fpr_limit <= 1.0:
        raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit}")
    if num_fpr_points < 2:
        raise ValueError(f"num_fpr_points must be >= 2, got {num_fpr_points}")
    if px.n_regions == 0:
        raise ValueError("AUPRO is undefined without defect regions: every ground-truth mask is empty")
    n = px.normal.size
    if n == 0:
        raise ValueError("AUPRO is undefined without normal pixels: every mask covers its whole image")
    # Thresholds: normal-pixel scores at evenly spaced FPR targets in [0, fpr_limit], plus the minimum
    # (FPR 1) so that the curve always crosses fpr_limit. For small inputs this is every normal score.
    k = np.round(np.linspace(0.0, fpr_limit * n, num_fpr_points + 1)).astype(np.int64)
    idx = np.clip(n - 1 - k, 0, n - 1)
    thr = np.unique(np.append(px.normal[idx], px.normal[0]))[::-1]
    # At each threshold v take the point just above v (score > v) and at v (score >= v): between two
    # consecutive normal scores the exact curve rises vertically, and samples tied at v move it along a
    # straight line (the usual tie convention). Together with the origin this reproduces the exact curve
    # whenever the grid holds every normal score, and approximates it to within the grid step otherwise.
    fpr = np.empty(2 * thr.size + 1)
    pro = np.empty(2 * thr.size + 1)
    fpr[0] = pro[0] = 0.0
    fpr[1::2] = (n - np.searchsorted(px.normal, thr, side="right")) / n
    fpr[2::2] = (n - np.searchsorted(px.normal, thr, side="left")) / n
    pro[1::2] = px.region_tail[np.searchsorted(px.region, thr, side="right")] / px.n_regions
    pro[2::2] = px.region_tail[np.searchsorted(px.region, thr, side="left")] / px.n_regions
    # Cut the curve at exactly fpr_limit (linear interpolation on the crossing segment).
    end = int(np.searchsorted(fpr, fpr_limit, side="right"))
    x, y = fpr[:end], pro[:end]
    if end < fpr.size:
        x0, x1, y0, y1 = fpr[end - 1], fpr[end], pro[end - 1], pro[end]
        y_lim = y0 + (y1 - y0) * (fpr_limit - x0) / (x1 - x0)
        x, y = np.append(x, fpr_limit), np.append(y, y_lim)
    area = float(np.sum(np.diff(x) * (y[1:] + y[:-1])) / 2.0)
    return min(max(area / fpr_limit, 0.0), 1.0)


def aupro(
    anomaly_maps: Sequence[npt.ArrayLike],
    masks: Sequence[npt.ArrayLike | None],
    fpr_limit: float = 0.3,
    num_fpr_points: int = 3000,
) -> float:
    """Normalized area under the per-region-overlap (PRO) curve up to ``fpr_limit``.

    As defined by Bergmann et al. (MVTec AD, IJCV 2021): the regions are the 8-connected components of
    every ground-truth mask. For a threshold ``t``, ``PRO(t)`` is the mean over all regions (of all
    images) of the fraction of the region's pixels with ``score >= t``, and ``FPR(t)`` the fraction of
    all normal pixels (mask 0, good images included) with ``score >= t``. PRO is integrated over FPR
    from 0 to ``fpr_limit`` (trapezoid, the curve interpolated at exactly ``fpr_limit``) and divided by
    ``fpr_limit``, so a perfect map gives 1.0 and a constant map ``fpr_limit / 2``.

    The thresholds are the normal-pixel scores at ``num_fpr_points + 1`` evenly spaced FPR values in
    ``[0, fpr_limit]``; the result is exact when there are fewer normal pixels than that (up to the
    scale) and otherwise within about ``1 / num_fpr_points`` of the exact value.

    Args:
        anomaly_maps: ``n`` arrays of shape ``(H_i, W_i)`` (sizes may differ), finite, higher = more
            anomalous.
        masks: ``n`` ground-truth masks, each of the shape of its map: bool or {0, 1} or {0, 255}
            (non-zero = defect). An empty mask (or ``None``) contributes normal pixels and no region.
        fpr_limit: Upper integration limit, in ``(0, 1]``.
        num_fpr_points: Number of FPR grid steps in ``[0, fpr_limit]`` (``>= 2``).

    Returns:
        AUPRO in ``[0, 1]``.

    Raises:
        ValueError: No region at all, no normal pixel, mismatched lengths/shapes or non-finite scores.
    """
    return _aupro_from_pixels(_collect_pixels(anomaly_maps, masks), fpr_limit, num_fpr_points)


def pixel_metrics(
    anomaly_maps: Sequence[npt.ArrayLike],
    masks: Sequence[npt.ArrayLike | None],
    fpr_limit: float = 0.3,
    num_fpr_points: int = 3000,
) -> PixelMetrics:
    """Pixel-level AUROC, AP and AUPRO of a test set.

    Equal to :func:`roc_auc` and :func:`average_precision` on all pixels flattened together (label =
    mask non-zero) and :func:`aupro` on the maps; the pixels are collected and sorted only once.

    Args:
        anomaly_maps: ``n`` arrays of shape ``(H_i, W_i)``, finite, higher = more anomalous.
        masks: ``n`` masks of the same shapes (bool, {0, 1} or {0, 255}; ``None`` = no defect).
        fpr_limit: AUPRO integration limit, see :func:`aupro`.
        num_fpr_points: AUPRO FPR grid size, see :func:`aupro`.

    Returns:
        ``{"pixel_auroc", "pixel_ap", "aupro"}``.

    Raises:
        ValueError: No defect pixel, no normal pixel or invalid inputs.
    """
    px = _collect_pixels(anomaly_maps, masks)
    srt = _SortedClasses(pos=px.region, neg=px.normal)
    return {
        "pixel_auroc": _auroc_sorted(srt),
        "pixel_ap": _ap_sorted(srt),
        "aupro": _aupro_from_pixels(px, fpr_limit, num_fpr_points),
    }


# --------------------------------------------------------------------------------------------------
# Image-level summary
# --------------------------------------------------------------------------------------------------


def image_metrics(
    scores: npt.ArrayLike, labels: npt.ArrayLike, threshold: float, defect_types: Sequence[str]
) -> ImageMetrics:
    """Image-level metrics of a test set.

    Args:
        scores: Shape ``(N,)`` image scores, finite, higher = more anomalous.
        labels: Shape ``(N,)``, 1/True = defective, 0/False = good.
        threshold: Operating threshold (``score >= threshold`` = FAIL) for the rates.
        defect_types: ``N`` defect type names parallel to ``scores``; good images are ``"good"``, and
            exactly the images of label 0 must be ``"good"``.

    Returns:
        ``image_auroc``, ``image_ap``, ``image_f1_max`` (with ``image_f1_max_threshold``),
        ``false_reject_rate`` and ``escape_rate`` at ``threshold``, ``threshold``, ``n_test_images``,
        ``n_good``, ``n_defective`` and ``per_defect_image_auroc``: for each defect type other than
        ``"good"`` (sorted by name), the AUROC of that type's images against all good images.

    Raises:
        ValueError: Only one class present, labels inconsistent with ``defect_types`` or invalid inputs.
    """
    s = _as_scores(scores)
    y = _as_labels(labels, s.size)
    types = [str(t) for t in defect_types]
    if len(types) != s.size:
        raise ValueError(
            f"scores and defect_types differ in length: {s.size} scores, {len(types)} defect types"
        )
    mismatched = [i for i, (t, lab) in enumerate(zip(types, y, strict=True)) if (t == GOOD_TYPE) == bool(lab)]
    if mismatched:
        i = mismatched[0]
        raise ValueError(
            f"{len(mismatched)} image(s) have a label that contradicts their defect type "
            f"(good images must have label 0 and type {GOOD_TYPE!r}); first: index {i}, "
            f"type {types[i]!r}, label {int(y[i])}"
        )
    srt = _split_sorted(s, y)
    auroc = _auroc_sorted(srt)
    f1 = _f1_sorted(srt)
    rates = rates_at_threshold(s, y, threshold)
    type_arr = np.array(types, dtype=object)
    per_defect: dict[str, float] = {}
    for dtype_name in sorted(set(types) - {GOOD_TYPE}):
        pos = s[type_arr == dtype_name]
        pos.sort()
        per_defect[dtype_name] = _auroc_sorted(_SortedClasses(pos=pos, neg=srt.neg))
    return {
        "image_auroc": auroc,
        "image_ap": _ap_sorted(srt),
        "image_f1_max": f1["f1"],
        "image_f1_max_threshold": f1["threshold"],
        "false_reject_rate": rates["false_reject_rate"],
        "escape_rate": rates["escape_rate"],
        "threshold": float(threshold),
        "n_test_images": int(s.size),
        "n_good": rates["n_good"],
        "n_defective": rates["n_defective"],
        "per_defect_image_auroc": per_defect,
    }
