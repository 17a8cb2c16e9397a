"""Calibration on held-out defect-free images: score normalisation statistics and the threshold.

The calibration images are a seeded split of ``train/good`` that the student and the memory bank never
see (``trainer.data.splits``). They have two roles, and since this version each role gets its own,
disjoint images (:func:`split_roles`: ``calibration.threshold_fraction``, default half of them, raised to
``calibration.min_threshold_images`` where the fit role keeps ``calibration.min_fit_images``; ``auto``
asks for the :func:`conformal_min` images with which the conformal rule below reaches the target, 99
for 1 %, so a part with ~700 good images gets the distribution-free guarantee):

1. **Fit images**: cue statistics (mean and std of each scale's raw distillation and bank maps over the
   real-image pixels, letterbox padding excluded), which UGHF uses to put the cues on one scale, and the
   per-part cue-mix selection on synthetic defects drawn into them (``trainer/select.py``).
2. **Threshold images**: the threshold (:func:`fit_threshold`) on the image scores of the deployed
   inference path (TTSA included when enabled), for a target false-reject rate ``alpha`` (default 1 %).
   A part FAILs when ``score >= threshold``. These images take no part in anything else, so, given the
   model that the fit images produced, their scores and the scores of new good parts are exchangeable.
   The rule:

   * **conformal** when ``k = ceil((n + 1)(1 - alpha)) <= n`` (``n`` threshold images; n >= 99 for 1 %):
     the threshold lies just above the k-th smallest threshold-image score. Guarantee: for exchangeable
     good parts, ``P(false reject) <= alpha`` averaged over the draw of the threshold images (split
     conformal), with no distribution assumption.
   * **gaussian_bound** otherwise: the upper one-sided ``1 - alpha`` prediction bound of a normal fit,
     ``mean + t_{1-alpha, n-1} * std * sqrt(1 + 1/n)`` (``scipy.stats.t``), never below the largest
     threshold-image score. Guarantees: expected FRR ``<= alpha`` *if the good scores are normal* (an
     assumption, broken by skewed or heavy-tailed scores); and, whatever the distribution, expected FRR
     ``<= 1 / (n + 1)`` (the threshold is never below the largest of ``n`` exchangeable scores), e.g.
     1.3 % for 76 threshold images. The test suite measures all three statements. Image scores of
     textured parts are heavy-tailed (magnetic tile: the normal bound alone rejected 3.2 % of held-out
     good tiles for a 1 % target, ``benchmarks/frr_check.py``), so the floor is what binds there.

   Fewer than 2 scores, or scores with no spread, raise an error rather than guess.

Before this split, the same images set the statistics, chose the mix and set the threshold: the model was
adapted to exactly the images that then certified it, so their scores were biased low against new good
parts and neither guarantee held as stated (``tests/test_calibration_guarantee.py`` shows the bias on
generated scores). Runs and bundles record which role each calibration image had (``roles``).

Pixel statistics of the threshold images' maps (quantiles) are stored too: the edge uses them to scale
heatmaps, and the image threshold doubles as the default pixel threshold for defect regions.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
from scipy import stats

from engines.verdict import fails
from trainer.errors import DataError

__all__ = [
    "Calibration",
    "conformal_min",
    "fit_threshold",
    "split_roles",
    "student_t_quantile",
    "summarize",
]

GUARANTEES = {
    "conformal": "split conformal: E[false-reject rate] <= target for good parts exchangeable with the "
    "threshold images (which set nothing else)",
    "gaussian_bound": "normal prediction bound: E[false-reject rate] <= target if good scores are normal "
    "(an assumption), and <= 1/(n+1) for any distribution (never below the largest of the n threshold "
    "scores); the threshold images set nothing else",
}


def student_t_quantile(p: float, dof: int) -> float:
    """Quantile of Student's t with ``dof`` degrees of freedom (``scipy.stats.t.ppf``)."""
    if dof < 1:
        raise ValueError(f"dof must be >= 1, got {dof}")
    return float(stats.t.ppf(p, dof))


def conformal_min(target_frr: float) -> int:
    """The fewest threshold images with which the split-conformal rule reaches ``target_frr`` (99 for
    1 %): ``ceil((n + 1)(1 - alpha)) <= n``; with fewer, no order statistic keeps the target without a
    distribution assumption (the largest of ``n`` rejects ``1 / (n + 1)`` of good parts on average)."""
    return math.ceil((1.0 - target_frr) / target_frr - 1e-9)


def split_roles(
    n: int, threshold_fraction: float, seed: int, min_threshold: int = 0, min_fit: int = 2
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split of ``n`` calibration images into fit images (cue statistics, selection) and
    threshold images: ``(fit indices, threshold indices)``, each sorted, disjoint, at least 2 each.

    The threshold gets ``round(threshold_fraction * n)`` images, raised towards ``min_threshold`` as far
    as the fit role keeps ``min_fit`` images, clamped so that both roles keep 2. The threshold images of
    a smaller ``min_threshold`` are a subset of a larger one's (one seeded order).

    Raises:
        DataError: fewer than 4 calibration images (2 per role).
    """
    if not 0.0 < threshold_fraction < 1.0:
        raise ValueError(f"threshold_fraction must be in (0, 1), got {threshold_fraction}")
    if n < 4:
        raise DataError(
            f"{n} calibration image(s): at least 4 are needed (2 for the cue statistics, 2 for the "
            "threshold); add defect-free images to train/good or raise data.min_calib"
        )
    n_thr = max(2, math.floor(threshold_fraction * n + 0.5))
    n_thr = max(n_thr, min(min_threshold, n - max(2, min_fit)))
    n_thr = min(n - 2, n_thr)
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[n_thr:]), np.sort(order[:n_thr])


def summarize(values: np.ndarray) -> dict[str, float]:
    """Mean, std, min, max and quantiles (50/90/99/99.9 %) of ``values`` as plain floats."""
    v = np.asarray(values, dtype=np.float64).ravel()
    q = np.quantile(v, [0.5, 0.9, 0.99, 0.999])
    return {
        "mean": float(v.mean()),
        "std": float(v.std()),
        "min": float(v.min()),
        "max": float(v.max()),
        "p50": float(q[0]),
        "p90": float(q[1]),
        "p99": float(q[2]),
        "p999": float(q[3]),
    }


@dataclass(frozen=True)
class Calibration:
    """What calibration decided; stored in the run and the bundle manifest.

    ``n_images`` and ``calib_frr`` count the threshold images. ``roles`` is ``"split"`` (threshold images
    disjoint from the ``n_fit_images`` that set the cue statistics and the cue mix) or ``"shared"``
    (a record written before the roles were separated: no guarantee, see the module docstring);
    ``guarantee`` states what the rule promises.
    """

    threshold: float
    rule: str
    target_frr: float
    n_images: int
    calib_frr: float
    image_scores: dict[str, float]
    pixel_scores: dict[str, float]
    roles: str = "shared"
    n_fit_images: int = 0
    guarantee: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Calibration:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


MIN_THRESHOLD_IMAGES = 2  # fewer good images cannot set a threshold (fit_threshold)


def fit_threshold(scores: np.ndarray, target_frr: float = 0.01) -> tuple[float, str]:
    """Threshold for a target false-reject rate on good-image ``scores`` ``[n]`` (see module docstring).

    Returns:
        ``(threshold, rule)`` with rule ``"conformal"`` or ``"gaussian_bound"``.

    Raises:
        DataError: fewer than 2 scores, non-finite scores, or no spread.
    """
    s = np.sort(np.asarray(scores, dtype=np.float64).ravel())
    n = s.size
    if n < MIN_THRESHOLD_IMAGES:
        raise DataError(
            f"cannot calibrate a threshold from {n} image(s): add defect-free images to train/good"
        )
    if not np.all(np.isfinite(s)):
        raise DataError(
            f"{int((~np.isfinite(s)).sum())} calibration score(s) are not finite: check the images"
        )
    if not 0.0 < target_frr < 1.0:
        raise ValueError(f"target_frr must be in (0, 1), got {target_frr}")
    k = math.ceil((n + 1) * (1.0 - target_frr))
    spread = float(s[-1] - s[0])
    if spread <= 0:
        raise DataError(
            "all calibration images have the same score: the calibration images are identical or blank"
        )
    if k <= n:
        # Just above the k-th order statistic, so that the k calibration scores themselves pass.
        upper = s[k] if k < n else s[-1] + spread
        return float(s[k - 1] + 1e-6 * (upper - s[k - 1]) + 1e-12), "conformal"
    mean, std = float(s.mean()), float(s.std(ddof=1))
    bound = mean + student_t_quantile(1.0 - target_frr, n - 1) * std * math.sqrt(1.0 + 1.0 / n)
    return float(max(bound, s[-1] + 1e-6 * spread)), "gaussian_bound"


def calibrate(
    image_scores: np.ndarray, pixel_values: np.ndarray, target_frr: float, n_fit_images: int = 0
) -> Calibration:
    """Threshold + statistics from threshold-image scores ``[n]`` and sampled map pixels ``[m]``.

    ``n_fit_images``: how many other, disjoint calibration images set the cue statistics and the mix
    (``roles = "split"``); 0 records shared roles (no guarantee)."""
    threshold, rule = fit_threshold(image_scores, target_frr)
    scores = np.asarray(image_scores, dtype=np.float64)
    return Calibration(
        threshold=threshold,
        rule=rule,
        target_frr=target_frr,
        n_images=int(scores.size),
        calib_frr=float(np.mean(fails(scores, threshold))),
        image_scores=summarize(scores),
        pixel_scores=summarize(pixel_values),
        roles="split" if n_fit_images > 0 else "shared",
        n_fit_images=int(n_fit_images),
        guarantee=GUARANTEES[rule]
        if n_fit_images > 0
        else "none: the threshold images also fitted the model",
    )
