"""The quality benchmark's tables (``benchmarks/quality.py``): what each row says of its run's choices.

The benchmark itself trains on the real data sets (tens of minutes); these tests check its reporting on
hand-made rows, and that every variant is described and derives a known single cue.
"""

from __future__ import annotations

from typing import Any

from conftest import load_benchmark

quality = load_benchmark("quality.py", "quality_bench")


def _row(**extra: Any) -> dict[str, Any]:
    row: dict[str, Any] = {"dataset": "magnetic_tile", "variant": "position_gain_bank_only"}
    row.update(extra)
    return row


def test_every_variant_is_described_and_derives_a_known_cue() -> None:
    assert set(quality.VARIANTS) == set(quality.LABELS)
    assert {derive for _, derive, _ in quality.VARIANTS.values()} <= {"", "bank_only", "distill_only"}
    # the single cues of round 18's run train nothing new: they share the full profile's run directory
    full = quality._run_key(quality.VARIANTS["position_gain"][0])
    for name in ("position_gain_bank_only", "position_gain_distill_only"):
        assert quality._run_key(quality.VARIANTS[name][0]) == full


def test_the_image_score_column_names_the_position_weight_where_the_run_has_the_cue() -> None:
    pair = {
        "sigma": 2.0,
        "candidates": [
            {"sigma": 4.0, "reduce": "max", "objective": 2.5},
            {"sigma": 2.0, "reduce": "max", "objective": 2.51234},
        ],
    }
    text = quality._score(_row(score_reduce="max", score_selection=pair, position_weight=0.25))
    assert text == "max, sigma 2 (chosen together: 4/max 2.5000, 2/max 2.5123); position cue weight 0.25"
    assert quality._score(_row(score_reduce="max", score_selection=pair, position_weight=0.0)).endswith(
        "; position cue weight 0"
    )
    # a run without the cue (or a row written before the column): no weight named
    assert "position" not in quality._score(_row(score_reduce="topk_mean", position_weight=None))
    assert quality._score(_row(score_reduce="topk_mean")) == "topk_mean"
    assert (
        quality._mix(_row()) == "0 / 1"
        and quality._design(_row(bank_selection={"chosen": "joint"})) == "joint"
    )
