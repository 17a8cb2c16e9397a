"""Choose a part's image score, its largest map pixel or the mean of its largest pixels, without test images.

The image score reduces the smoothed anomaly map to one number (``score.reduce``): ``max`` (its largest
pixel, PatchCore's) or ``topk_mean`` (the mean of its ``score.topk_fraction`` largest pixels, 1 % by
default). The largest pixel of a good part's map is its noisiest; on a grainy texture the mean of the
top 1 % is steadier, while a defect of a few pixels can drown in it. Which one separates defective from
good parts better depends on the part, so with ``score.select: synthetic`` it is chosen per part, after
the bank design and the cue mix, on the same evidence they were chosen on: the graded synthetic defects
drawn into the calibration *fit* images (:mod:`trainer.select`; never the threshold images, never test
images). Each candidate of ``score.candidates`` is scored with the selection's objective through the
model's own cues, mix and smoothing (only the image AUROC term can differ: the maps are the same); the
one-standard-error rule over the paired folds keeps the earliest listed candidate within one standard
error of the best, so ``max``, listed first, stays unless ``topk_mean`` is measurably better.

The bank design and the cue mix are chosen with the first candidate (:func:`baseline`), in a fit and in
a recalibration alike, so that recalibrating a saved run (whose config holds the chosen score) repeats
the fit's choices.

``topk_mean`` is only a candidate when its ``k`` stays under TensorRT's TopK limit (``k < 3840`` per
model input), so that every backend can run the chosen score. Measured: ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from engines.preprocess import PreprocessSpec
from trainer.config import Config
from trainer.models.masf import MASF
from trainer.select import CueSet, SyntheticProbe, model_mix, rank_mixes, synthetic_probe, within_one_se

__all__ = ["TOPK_LIMIT", "ScoreSelection", "baseline", "eligible", "select_score_reduce"]

_logger = logging.getLogger(__name__)

TOPK_LIMIT = 3840  # TensorRT's TopK: k < 3840 per call


@dataclass(frozen=True)
class ScoreSelection:
    """The chosen ``score.reduce`` and every candidate's row (objective, standard error, folds)."""

    reduce: str
    candidates: list[dict[str, Any]]
    n_good: int
    n_synthetic: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "rule": "graded synthetic defects in calibration fit images; image AUROC + pixel AUROC + AUPRO; "
            "1-SE, the earliest listed candidate",
            "reduce": self.reduce,
            "n_good": self.n_good,
            "n_synthetic": self.n_synthetic,
            "candidates": self.candidates,
        }


def baseline(cfg: Config) -> Config:
    """``cfg`` with the image score the earlier choices are made with: the first of ``score.candidates``
    when ``score.select`` is ``synthetic``, else ``cfg`` unchanged."""
    sc = cfg.score
    if sc.select != "synthetic" or sc.reduce == sc.candidates[0]:
        return cfg
    return replace(cfg, score=replace(sc, reduce=sc.candidates[0]))


def eligible(candidates: Sequence[str], input_size: tuple[int, int], topk_fraction: float) -> list[str]:
    """The candidates every backend can run at this model input size (``topk_mean``: ``k < 3840``)."""
    k = max(1, round(topk_fraction * input_size[0] * input_size[1]))
    return [c for c in candidates if c != "topk_mean" or k < TOPK_LIMIT]


@torch.no_grad()
def select_score_reduce(
    model: MASF,
    fit_images: Sequence[np.ndarray],
    spec: PreprocessSpec,
    device: torch.device,
    candidates: Sequence[str],
    seed: int,
    batch_size: int = 8,
    probe: SyntheticProbe | None = None,
    cues: tuple[CueSet, CueSet] | None = None,
) -> ScoreSelection | None:
    """Rank ``candidates`` (values of ``score.reduce``) for ``model`` as it is (cue statistics set, mix
    chosen) on the synthetic defects of ``fit_images`` (``probe``: :func:`~trainer.select.synthetic_probe`
    of them with ``seed``, when the caller has it; ``cues``: the probe's good and defective cues under
    ``model``, when the caller has them, e.g. from the bank-design selection, which scored the same
    images with the same bank). ``None`` when fewer than two candidates are eligible or no defect
    survives the resize. The model is left unchanged: the caller applies the choice."""
    post = model.post
    names = eligible(candidates, model.input_size, post.topk_fraction)
    if len(names) < len(candidates):
        _logger.info("score.reduce topk_mean left out: its k would reach TensorRT's TopK limit")
    if len(names) < 2:
        return None
    if probe is None:
        probe = synthetic_probe(model, fit_images, spec, device, seed, batch_size)
        if probe is None:
            return None
    good, bad = cues if cues is not None else (probe.good.cues(model), probe.defective.cues(model))
    groups = (np.arange(len(fit_images)), probe.sources)
    mix = [model_mix(model)]
    rows: list[dict[str, Any]] = []
    folds: list[list[float]] = []
    try:
        for reduce in names:
            model.post = post.with_reduce(reduce)
            values: list[list[float]] = []
            _, ranked = rank_mixes(model, good, bad, probe.masks, mix, groups, fold_values=values)
            metrics = {k: ranked[0][k] for k in ("image_auroc", "pixel_auroc", "aupro", "objective")}
            rows.append({"reduce": reduce, **metrics})
            folds.append(values[0])
    finally:
        model.post = post
    chosen = rows[min(within_one_se(rows, np.asarray(folds)))]["reduce"]
    for row, f in zip(rows, folds, strict=True):
        row["folds"] = f
    _logger.info(
        "image score %s chosen on synthetic defects (%s)",
        chosen,
        ", ".join(f"{r['reduce']} {r['objective']:.4f}" for r in rows),
    )
    return ScoreSelection(chosen, rows, len(fit_images), len(probe.sources))
