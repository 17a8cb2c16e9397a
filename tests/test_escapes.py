"""trainer/escapes.py: the escape estimate, synthetic defects below the calibrated threshold."""

from __future__ import annotations

import numpy as np
import pytest

from trainer.escapes import at_threshold, escape_table, summary


def test_escape_table_counts_scores_below_the_threshold_by_kind_and_contrast() -> None:
    scores = np.array([1.0, 5.0, 3.0, 2.0, 6.0, 0.5])
    kinds = ["scratch", "spot", "scratch", "spot", "scratch", "spot"]
    contrasts = np.array([1.0, 9.0, 5.0, 2.0, 8.0, 4.0])
    t = escape_table(scores, kinds, contrasts, threshold=3.0)
    # 1, 2 and 0.5 pass; 3 sits at the threshold and FAILs (the verdict rule), 5 and 6 fail
    assert t["n"] == 6 and t["escapes"] == pytest.approx(3 / 6)
    assert t["by_kind"] == {"scratch": pytest.approx(1 / 3), "spot": pytest.approx(2 / 3)}
    # thirds of the contrast: {1, 2} faint (both pass), {4, 5} medium (0.5 passes, 3 fails), {8, 9} strong
    assert t["by_contrast"] == {"faint": 1.0, "medium": 0.5, "strong": 0.0}
    assert "by_contrast" not in escape_table(scores[:2], kinds[:2], contrasts[:2], 3.0)


def test_a_stored_estimate_is_redone_at_a_new_threshold_and_summarised() -> None:
    stored = {
        "scores": [1.0, 5.0, 3.0, 2.0, 6.0, 0.5],
        "kinds": ["scratch", "spot"] * 3,
        "contrasts": [1.0, 9.0, 5.0, 2.0, 8.0, 4.0],
    }
    low = at_threshold(stored, 3.0)
    high = at_threshold(stored, 5.5)  # after a defective threshold image is dropped the other way round
    assert low is not None and high is not None
    assert low["threshold"] == 3.0 and low["escapes"] == pytest.approx(0.5)
    assert high["escapes"] == pytest.approx(5 / 6) and high["by_contrast"]["strong"] == 0.5
    assert high["scores"] == stored["scores"] and high["kinds"] == stored["kinds"]
    assert at_threshold(None, 1.0) is None
    assert summary(low) == "50 % (faint third 100 %, strong third 0 %; 6 defects)"
    assert summary(None) == ""
