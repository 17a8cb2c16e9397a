"""Choose a part's image score (its largest map pixel or the mean of its largest pixels) and the map's
smoothing, without test images.

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
model input), so that every backend can run the chosen score.

The map's smoothing (``score.sigma``, a Gaussian of that many frame pixels) is chosen the same way when
``score.sigma_candidates`` lists more than one value (:func:`select_smoothing`): after the cue mix and
before the image score, which is then chosen on the chosen smoothing. A blur as wide as a defect lifts a
defect area out of a grainy texture; a narrower one keeps a defect of a few pixels from being spread
thin. Here every term of the objective can differ (the map changes).

With ``score.joint`` the two are chosen together instead (:func:`select_pair`): every (sigma, image score)
pair is ranked, and among the pairs within one standard error of the best the one with the fewest
changes from the first pair wins, then the higher objective (the cue mix's rule). One after the other,
the smoothing is chosen with ``max`` and the image score only on the chosen smoothing, each keeping its
first candidate within one standard error, which can stop at a pair the joint ranking puts measurably
behind another. Measured: ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import numpy as np
import torch

from engines.preprocess import PreprocessSpec
from trainer.config import Config
from trainer.models.masf import MASF
from trainer.models.masf.ughf import MapPostprocess
from trainer.select import CueSet, SyntheticProbe, model_mix, rank_mixes, synthetic_probe, within_one_se

__all__ = [
    "TOPK_LIMIT",
    "PairSelection",
    "ScoreSelection",
    "SmoothingSelection",
    "baseline",
    "choose_pair",
    "eligible",
    "select_pair",
    "select_score_reduce",
    "select_smoothing",
]

_logger = logging.getLogger(__name__)

TOPK_LIMIT = 3840  # TensorRT's TopK: k < 3840 per call
_RULE = (
    "graded synthetic defects in calibration fit images; image AUROC + pixel AUROC + AUPRO; "
    "1-SE, the earliest listed candidate"
)
_JOINT_RULE = (
    "graded synthetic defects in calibration fit images; image AUROC + pixel AUROC + AUPRO; "
    "1-SE, the fewest changes from the first (sigma, reduce) pair, then the higher objective"
)


@dataclass(frozen=True)
class _Choice:
    """A chosen post-processing setting (the fields named by the subclass's ``KEYS``) and every
    candidate's row (objective, standard error, folds)."""

    KEYS: ClassVar[tuple[str, ...]]
    RULE: ClassVar[str] = _RULE
    candidates: list[dict[str, Any]]
    n_good: int
    n_synthetic: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "rule": self.RULE,
            **{k: getattr(self, k) for k in self.KEYS},
            "n_good": self.n_good,
            "n_synthetic": self.n_synthetic,
            "candidates": self.candidates,
        }


@dataclass(frozen=True)
class ScoreSelection(_Choice):
    """The chosen ``score.reduce`` and every candidate's row."""

    KEYS: ClassVar[tuple[str, ...]] = ("reduce",)
    reduce: str


@dataclass(frozen=True)
class PairSelection(ScoreSelection):
    """The chosen ``score.sigma`` and ``score.reduce``, chosen together, and every pair's row (each with
    its ``sigma`` and ``reduce``). Stored as the run's ``score_selection``, with ``sigma`` beside
    ``reduce``."""

    KEYS: ClassVar[tuple[str, ...]] = ("reduce", "sigma")
    RULE: ClassVar[str] = _JOINT_RULE
    sigma: float


@dataclass(frozen=True)
class SmoothingSelection(_Choice):
    """The chosen ``score.sigma`` and every candidate's row."""

    KEYS: ClassVar[tuple[str, ...]] = ("sigma",)
    sigma: float


def baseline(cfg: Config) -> Config:
    """``cfg`` with the image score and smoothing the earlier choices are made with: the first of
    ``score.candidates`` and of ``score.sigma_candidates`` (when it lists any) when ``score.select`` is
    ``synthetic``, else ``cfg`` unchanged."""
    sc = cfg.score
    if sc.select != "synthetic":
        return cfg
    reduce = sc.candidates[0]
    sigma = sc.sigma_candidates[0] if sc.sigma_candidates else sc.sigma
    if (sc.reduce, sc.sigma) == (reduce, sigma):
        return cfg
    return replace(cfg, score=replace(sc, reduce=reduce, sigma=sigma))


def eligible(candidates: Sequence[str], input_size: tuple[int, int], topk_fraction: float) -> list[str]:
    """The candidates every backend can run at this model input size (``topk_mean``: ``k < 3840``)."""
    k = max(1, round(topk_fraction * input_size[0] * input_size[1]))
    return [c for c in candidates if c != "topk_mean" or k < TOPK_LIMIT]


def _rank_posts(
    model: MASF,
    fit_images: Sequence[np.ndarray],
    spec: PreprocessSpec,
    device: torch.device,
    seed: int,
    batch_size: int,
    probe: SyntheticProbe | None,
    cues: tuple[CueSet, CueSet] | None,
    posts: Sequence[tuple[dict[str, Any], MapPostprocess]],
    choose: Callable[[list[dict[str, Any]], np.ndarray], int],
) -> tuple[int, list[dict[str, Any]], SyntheticProbe] | None:
    """Each ``(label, post)`` of ``posts`` ranked with the model's cues and mix on the synthetic defects
    of ``fit_images`` (``probe``, drawn here with ``seed`` when the caller has none): the index
    ``choose(rows, folds)`` picks, one row per candidate (``{**label, metrics..., "folds": [...]}``) and
    the probe. ``None`` when no defect survives the resize. The model's ``post`` is restored."""
    if probe is None:
        probe = synthetic_probe(model, fit_images, spec, device, seed, batch_size)
        if probe is None:
            return None
    n_fit = len(fit_images)
    kept = model.post
    good, bad = cues if cues is not None else (probe.good.cues(model), probe.defective.cues(model))
    groups = (np.arange(n_fit), probe.sources)
    mix = [model_mix(model)]
    rows: list[dict[str, Any]] = []
    folds: list[list[float]] = []
    try:
        for label, post in posts:
            model.post = post
            values: list[list[float]] = []
            _, ranked = rank_mixes(model, good, bad, probe.masks, mix, groups, fold_values=values)
            metrics = {k: ranked[0][k] for k in ("image_auroc", "pixel_auroc", "aupro", "objective")}
            rows.append({**label, **metrics})
            folds.append(values[0])
    finally:
        model.post = kept
    chosen = choose(rows, np.asarray(folds))
    for row, f in zip(rows, folds, strict=True):
        row["folds"] = f
    _logger.info(
        "%s chosen on synthetic defects (%s)",
        _label(rows[chosen], posts[0][0]),
        ", ".join(f"{_label(r, posts[0][0])} {r['objective']:.4f}" for r in rows),
    )
    return chosen, rows, probe


def _label(row: dict[str, Any], keys: dict[str, Any]) -> str:
    return " ".join(f"{k} {row[k]}" for k in keys)


def _earliest(rows: list[dict[str, Any]], folds: np.ndarray) -> int:
    """The one-standard-error rule of a single setting: the earliest listed within one standard error."""
    return within_one_se(rows, folds)[0]


def choose_pair(rows: list[dict[str, Any]], folds: np.ndarray) -> int:
    """The one-standard-error rule for (sigma, reduce) pairs (``rows``, the first being the product's
    pair; ``folds``: ``[pair, fold]``): among the pairs within one standard error of the best, the
    fewest changes from the first pair (0, 1 or 2 settings), then the higher objective. Fills each row's
    ``se`` and ``within_1se``. Returns its index."""
    first = rows[0]

    def key(i: int) -> tuple[int, float]:
        r = rows[i]
        return (r["sigma"] != first["sigma"]) + (r["reduce"] != first["reduce"]), -r["objective"]

    return min(within_one_se(rows, folds), key=key)


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
    posts = [({"reduce": name}, post.with_reduce(name)) for name in names]
    ranked = _rank_posts(model, fit_images, spec, device, seed, batch_size, probe, cues, posts, _earliest)
    if ranked is None:
        return None
    chosen, rows, probe = ranked
    return ScoreSelection(rows, len(fit_images), len(probe.sources), reduce=names[chosen])


@torch.no_grad()
def select_smoothing(
    model: MASF,
    fit_images: Sequence[np.ndarray],
    spec: PreprocessSpec,
    device: torch.device,
    candidates: Sequence[float],
    seed: int,
    batch_size: int = 8,
    probe: SyntheticProbe | None = None,
    cues: tuple[CueSet, CueSet] | None = None,
) -> SmoothingSelection | None:
    """Rank ``candidates`` (values of ``score.sigma``) for ``model`` as it is, with its image score, on
    the synthetic defects of ``fit_images``; arguments as :func:`select_score_reduce`. ``None`` with
    fewer than two candidates or when no defect survives the resize. The model is left unchanged."""
    if len(candidates) < 2:
        return None
    posts = [({"sigma": float(s)}, model.post.with_sigma(float(s))) for s in candidates]
    ranked = _rank_posts(model, fit_images, spec, device, seed, batch_size, probe, cues, posts, _earliest)
    if ranked is None:
        return None
    chosen, rows, probe = ranked
    return SmoothingSelection(rows, len(fit_images), len(probe.sources), sigma=float(candidates[chosen]))


@torch.no_grad()
def select_pair(
    model: MASF,
    fit_images: Sequence[np.ndarray],
    spec: PreprocessSpec,
    device: torch.device,
    sigmas: Sequence[float],
    reduces: Sequence[str],
    seed: int,
    batch_size: int = 8,
    probe: SyntheticProbe | None = None,
    cues: tuple[CueSet, CueSet] | None = None,
) -> PairSelection | None:
    """Rank every pair of ``sigmas`` (values of ``score.sigma``) and the eligible ``reduces`` (values of
    ``score.reduce``), sigma by sigma, for ``model`` as it is, on the synthetic defects of ``fit_images``;
    other arguments as :func:`select_score_reduce`. Among the pairs within one standard error of the
    best, the chosen one changes the fewest settings from the first pair, then has the higher objective
    (the cue-mix choice's rule, :func:`trainer.select.within_one_se`): choosing the two one after the
    other, each keeping its first candidate within one standard error, can stop at a pair that the joint
    ranking puts measurably behind. ``None`` with fewer than two pairs or when no defect survives the
    resize. The model is left unchanged."""
    post = model.post
    names = eligible(reduces, model.input_size, post.topk_fraction)
    pairs = [(float(s), r) for s in sigmas for r in names]
    if len(pairs) < 2:
        return None
    posts = [({"sigma": s, "reduce": r}, post.with_sigma(s).with_reduce(r)) for s, r in pairs]
    ranked = _rank_posts(model, fit_images, spec, device, seed, batch_size, probe, cues, posts, choose_pair)
    if ranked is None:
        return None
    chosen, rows, probe = ranked
    sigma, reduce = pairs[chosen]
    return PairSelection(rows, len(fit_images), len(probe.sources), reduce=reduce, sigma=sigma)
