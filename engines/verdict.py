"""The verdict rule, in one place for the trainer's evaluation, the export parity check and the edge.

A part **FAILs when its score is at or above the threshold**: ``score >= threshold``. The comparison is
made in **float64**: the score (float32 out of every backend) is widened exactly to float64 and compared
with the threshold as stored (a JSON number, i.e. a float64). A score exactly at the threshold is FAIL
everywhere. A score that is not finite (NaN, infinity: a broken model or input) is never PASS: it is
``UNKNOWN``, and so is a missing score.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["FAIL", "PASS", "UNKNOWN", "VERDICTS", "fails", "verdict"]

PASS = "PASS"
FAIL = "FAIL"
UNKNOWN = "UNKNOWN"
VERDICTS = (PASS, FAIL, UNKNOWN)


def fails(scores: Any, threshold: float) -> np.ndarray:
    """bool array: which scores FAIL at ``threshold`` (``float64(score) >= float64(threshold)``).

    Non-finite scores give False here (they are not a FAIL but an UNKNOWN: see :func:`verdict`).
    """
    s = np.asarray(scores, dtype=np.float64)
    return np.asarray(s >= float(threshold))


def verdict(score: float | None, threshold: float) -> str:
    """``PASS``, ``FAIL`` or ``UNKNOWN`` for one score (None or non-finite: ``UNKNOWN``)."""
    if score is None:
        return UNKNOWN
    value = float(np.float64(score))
    if not math.isfinite(value) or not math.isfinite(float(threshold)):
        return UNKNOWN
    return FAIL if value >= float(threshold) else PASS
