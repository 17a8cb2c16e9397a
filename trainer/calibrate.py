"""Calibration on held-out defect-free images: score normalisation statistics and the threshold.

The calibration images are a seeded split of ``train/good`` that the student and the memory bank never
see (``trainer.data.splits``). Two things are measured on them:

1. **Cue statistics** (:func:`cue_statistics`): mean and std, over all pixels of all calibration images,
   of each scale's raw distillation and bank maps. UGHF uses them to put the cues on one scale.
2. **Threshold** (:func:`fit_threshold`), on the image scores of the deployed inference path (TTSA
   included when enabled), for a target false-reject rate ``alpha`` (default 1 %). A part FAILs when
   ``score >= threshold``. The rule:

   * **conformal** when ``k = ceil((n + 1)(1 - alpha)) <= n``: the threshold lies just above the k-th
     smallest calibration score. For exchangeable good parts, ``P(false reject) <= alpha``
     (split-conformal guarantee), with no distribution assumption.
   * **gaussian_bound** otherwise (too few images for an empirical 1-alpha quantile, e.g. n < 99 for
     1 %): the upper one-sided ``1 - alpha`` prediction bound of a normal fit,
     ``mean + t_{1-alpha, n-1} * std * sqrt(1 + 1/n)``, and never below the largest calibration score.
     The Student-t factor widens the bound for small ``n``.

   Fewer than 2 scores, or scores with no spread, raise an error rather than guess.

Pixel statistics of the calibration maps (quantiles) are stored too: the edge uses them to scale
heatmaps, and the image threshold doubles as the default pixel threshold for defect regions.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from statistics import NormalDist
from typing import Any

import numpy as np

from engines.verdict import fails
from trainer.errors import DataError

__all__ = ["Calibration", "fit_threshold", "student_t_quantile", "summarize"]


def _student_t_cdf(t: float, dof: int) -> float:
    """Exact CDF of Student's t for an integer ``dof`` (Abramowitz & Stegun 26.7.3 / 26.7.4)."""
    theta = math.atan(abs(t) / math.sqrt(dof))
    c2, s = math.cos(theta) ** 2, math.sin(theta)
    if dof % 2:  # odd: (2/pi) (theta + sin cos (1 + 2/3 cos^2 + 2*4/(3*5) cos^4 + ...))
        term, total = 1.0, 1.0 if dof > 1 else 0.0
        for j in range(1, (dof - 1) // 2):
            term *= c2 * (2 * j) / (2 * j + 1)
            total += term
        a = 2.0 / math.pi * (theta + s * math.cos(theta) * total)
    else:  # even: sin (1 + 1/2 cos^2 + 1*3/(2*4) cos^4 + ...)
        term, total = 1.0, 1.0
        for j in range(1, dof // 2):
            term *= c2 * (2 * j - 1) / (2 * j)
            total += term
        a = s * total
    return 0.5 + math.copysign(0.5 * a, t)


def student_t_quantile(p: float, dof: int) -> float:
    """Quantile of Student's t with ``dof`` degrees of freedom.

    Exact closed forms for dof 1 and 2; otherwise a Cornish-Fisher start (which alone is off by up to
    0.02 at p = 0.99 and dof 3, always on the low side) refined by Newton steps on the exact CDF.
    """
    if dof < 1:
        raise ValueError(f"dof must be >= 1, got {dof}")
    if dof == 1:
        return math.tan(math.pi * (p - 0.5))
    if dof == 2:
        a = 4 * p * (1 - p)
        return (2 * p - 1) * math.sqrt(2 / a)
    z = NormalDist().inv_cdf(p)
    v = float(dof)
    g1 = (z**3 + z) / 4
    g2 = (5 * z**5 + 16 * z**3 + 3 * z) / 96
    g3 = (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384
    g4 = (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / 92160
    t = z + g1 / v + g2 / v**2 + g3 / v**3 + g4 / v**4
    if dof > 1000:  # the expansion is already accurate to ~1e-12 here
        return t
    log_norm = math.lgamma((v + 1) / 2) - math.lgamma(v / 2) - 0.5 * math.log(v * math.pi)
    for _ in range(20):
        pdf = math.exp(log_norm - (v + 1) / 2 * math.log1p(t * t / v))
        step = (_student_t_cdf(t, dof) - p) / pdf
        t -= step
        if abs(step) < 1e-12 * max(1.0, abs(t)):
            break
    return t


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
    """What calibration decided; stored in the run and the bundle manifest."""

    threshold: float
    rule: str
    target_frr: float
    n_images: int
    calib_frr: float
    image_scores: dict[str, float]
    pixel_scores: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Calibration:
        return cls(**d)


def fit_threshold(scores: np.ndarray, target_frr: float = 0.01) -> tuple[float, str]:
    """Threshold for a target false-reject rate on good-image ``scores`` ``[n]`` (see module docstring).

    Returns:
        ``(threshold, rule)`` with rule ``"conformal"`` or ``"gaussian_bound"``.

    Raises:
        DataError: fewer than 2 scores, non-finite scores, or no spread.
    """
    s = np.sort(np.asarray(scores, dtype=np.float64).ravel())
    n = s.size
    if n < 2:
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


def calibrate(image_scores: np.ndarray, pixel_values: np.ndarray, target_frr: float) -> Calibration:
    """Threshold + statistics from calibration image scores ``[n]`` and sampled map pixels ``[m]``."""
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
    )
