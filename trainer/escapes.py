"""How many synthetic defects pass at the calibrated threshold: an escape estimate without test images.

A line's first question is how many bad parts get through. The threshold is set on good threshold
images (:mod:`trainer.calibrate`); the selections rank candidates on graded synthetic defects drawn into
the calibration *fit* images (:mod:`trainer.select`). This module puts the two together: the share of
those synthetic defects whose image score, through the model exactly as deployed (the chosen cue mixes,
image score and position cue; tiles stitched), lies below the threshold (the verdict rule: a score at
the threshold FAILs), overall, per defect kind and per contrast third (the mean absolute grey-level change
inside the defect's mask, :func:`~trainer.data.synthetic.defect_contrast`; the faint third first).

The fit images also chose the model's cue mix and image score, so the estimate is optimistic for those
choices, and synthetic defects are easier than most real ones: on magnetic tile's stored runs it was 34-58 %
where the test sets let 52-74 % through, and it ranked the runs' extremes as the test sets did
(``benchmarks/RESULTS.md``, session 20). It compares parts, runs and settings; it does not predict a line's
escape rate.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from engines.verdict import fails
from trainer.models.masf import MASF
from trainer.select import CueSet, SharedInputs, SyntheticProbe

__all__ = ["THIRDS", "at_threshold", "deployed_scores", "escape_table", "summary", "synthetic_escapes"]

THIRDS = ("faint", "medium", "strong")


def escape_table(
    scores: np.ndarray, kinds: Sequence[str], contrasts: np.ndarray, threshold: float
) -> dict[str, Any]:
    """Shares of ``scores`` below ``threshold``: ``escapes`` overall, ``by_kind`` (in first-seen order)
    and ``by_contrast`` per third of ``contrasts`` (with 3 or more scores; ``contrast_edges`` the two
    cut points)."""
    passed = ~fails(scores, threshold)
    kinds_arr = np.asarray(kinds)
    out: dict[str, Any] = {"n": len(scores), "escapes": float(passed.mean()) if len(scores) else 0.0}
    out["by_kind"] = {k: float(passed[kinds_arr == k].mean()) for k in dict.fromkeys(kinds)}
    if len(scores) >= 3:
        edges = np.quantile(contrasts, [1 / 3, 2 / 3])
        band = np.searchsorted(edges, contrasts, side="right")
        out["by_contrast"] = {
            name: float(passed[band == i].mean()) if (band == i).any() else None
            for i, name in enumerate(THIRDS)
        }
        out["contrast_edges"] = [float(e) for e in edges]
    return out


@torch.no_grad()
def deployed_scores(model: MASF, inputs: SharedInputs, cues: CueSet | None = None) -> np.ndarray:
    """Image scores ``[N]`` of ``inputs``' images (e.g. a probe's ``defective`` ones) as ``model`` deploys
    them (``MASF.forward``: the map's and the score's cue mixes, the position cue, the image score; tiled:
    each image's largest tile score), from their teacher features and distillation cues; ``cues``: their
    cues under ``model`` when the caller has them (else the bank cues are computed now)."""
    cues = cues if cues is not None else inputs.cues(model)
    device = next(model.parameters()).device
    size, fusion = model.input_size, model.fusion
    weights = fusion.score_weights()
    out = []
    for (feats, _, _), (cos, bank, valid) in zip(inputs.batches, cues.chunks, strict=True):
        fused = fusion(cos, bank, size)
        scored = fused if weights is None else fusion(cos, bank, size, weights)
        if model.position is not None and model.position_weight > 0:
            scored = model.with_position(scored, [f.to(device).float() for f in feats], valid)
        elif weights is None:
            scored = None
        out.append(model.post(fused, valid, scored).pred_score.float().cpu())
    scores = torch.cat(out).numpy()
    return cues.grid.reduce_scores(scores) if cues.grid is not None else scores


def synthetic_escapes(
    model: MASF, probe: SyntheticProbe, threshold: float, cues: CueSet | None = None
) -> dict[str, Any] | None:
    """The escape estimate (module docstring) of ``model`` at ``threshold``, with every defect's score,
    kind and contrast (so that :func:`at_threshold` can redo it for another threshold of the same model);
    None when the probe does not record its defects' kinds and contrasts."""
    if probe.kinds is None or probe.contrasts is None:
        return None
    scores = deployed_scores(model, probe.defective, cues)
    stored = {
        "scores": [round(float(x), 6) for x in scores],
        "kinds": list(probe.kinds),
        "contrasts": [round(float(x), 3) for x in probe.contrasts],
    }
    return at_threshold(stored, threshold)


def at_threshold(estimate: dict[str, Any] | None, threshold: float) -> dict[str, Any] | None:
    """The estimate's table for ``threshold`` from its stored ``scores``, ``kinds`` and ``contrasts``: in a
    fit (:func:`synthetic_escapes`) and again for a new threshold of the same model (e.g. after
    ``masf-train drop``), so both count the same stored values; None stays None."""
    if estimate is None:
        return None
    scores, kinds, contrasts = estimate["scores"], estimate["kinds"], estimate["contrasts"]
    return {
        "scores": scores,
        "kinds": kinds,
        "contrasts": contrasts,
        "rule": "graded synthetic defects in the calibration fit images scored as deployed; the share "
        "below the threshold",
        "threshold": float(threshold),
        **escape_table(np.asarray(scores), kinds, np.asarray(contrasts), threshold),
    }


def summary(estimate: dict[str, Any] | None) -> str:
    """One line for an operator, e.g. ``"58 % (faint third 85 %, strong third 28 %; 212 defects)"``;
    empty without an estimate."""
    if not estimate:
        return ""
    bands = estimate.get("by_contrast") or {}
    thirds = [f"{t} third {100 * bands[t]:.0f} %" for t in ("faint", "strong") if bands.get(t) is not None]
    detail = "; ".join([*([", ".join(thirds)] if thirds else []), f"{estimate['n']} defects"])
    return f"{100 * estimate['escapes']:.0f} % ({detail})"
