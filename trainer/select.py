"""Choose the cue mix of a trained model for its part, without test images.

UGHF mixes two cues per scale, ``s_l = a * cos_l + (1 - a) * bank_l`` (the paper fixes ``a = 0.6``). How
much each cue is worth depends on the part: on bottle both localise defects; on magnetic tile the
distillation cue alone is far weaker than the bank (measured, ``benchmarks/RESULTS.md``), and the paper's
mix lets more defects through than the bank alone. So after training, ``a`` is chosen per part:

1. the calibration images (held-out good images, never seen by the student or the bank) get graded
   synthetic defects of each kind in :data:`~trainer.data.synthetic.SELECTION_DEFECTS` (scratch, spot,
   crack, CutPaste-like patch from another calibration image), seeded: faint to obvious (contrast 25 to
   100 %) and thin or small to large (0.5x to 3x the nominal size, log-uniform), at least
   :data:`MIN_SYNTHETIC` of them (several rounds over a small calibration set). Graded, because with
   only obvious defects every usable mix detects all of them and the image term cannot tell the
   candidates apart, while escapes in the field are the faint defects;
2. both cues are computed once for the good and the defective versions;
3. each candidate ``a`` (``fusion.candidates`` plus the configured mix) is scored with the sum of the
   three headline metrics on this set, ``image AUROC + pixel AUROC + AUPRO`` (every 2nd pixel of the
   placed part), through the model's own fusion, smoothing and image score; the same sum on 5 folds of
   the calibration images (each with its own defects) gives each candidate's standard error against
   the best;
4. one-standard-error rule: among the candidates within one standard error of the best, a single cue
   wins over a mix (it skips a branch at inference, and a mix must *measurably* beat the bank-only
   baseline to be worth its cost and its risk), then the higher objective, then the smaller
   distillation weight.

For a tiled part (``data.tiling``) the cues are computed on the tiles and every candidate is scored as it
would be deployed: each image's tile maps stitched into its frame, its score the largest tile score.

The choice and every candidate's numbers are stored in the run (``fusion_selection``). Synthetic defects
are not real ones: the rule can only prefer what separates *some* visible anomalies from this part's
normal variation, and the numbers are a ranking aid, not a quality estimate. ``fusion.select: none``
keeps the configured mix (the paper's configuration does).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from engines.preprocess import PreprocessSpec, model_inputs, preprocess_batch, valid_masks
from engines.tiling import TileGrid
from trainer.data.synthetic import SELECTION_DEFECTS, add_defect, defect_contrast
from trainer.evaluate.metrics import pixel_metrics, roc_auc
from trainer.inference import feature_dtype, frames_to_tensor
from trainer.models.masf import MASF

__all__ = [
    "Candidate",
    "CueBatch",
    "CueSet",
    "MixSelection",
    "SharedInputs",
    "SyntheticProbe",
    "SyntheticRanking",
    "cue_batches",
    "cues_of",
    "mix_candidates",
    "mix_grid",
    "model_frames",
    "model_mix",
    "paired_se",
    "rank_mixes",
    "rank_on_synthetic",
    "select_cue_mix",
    "set_cue_statistics",
    "synthetic_defects",
    "synthetic_objective",
    "synthetic_probe",
    "valid_at",
    "within_one_se",
]

_PIXEL_STRIDE = 2
# Synthetic defects: contrast (fraction of add_defect's full contrast, uniform) and size (multiple of its
# nominal size, log-uniform), and how many at least (several rounds over small calibration sets).
STRENGTHS = (0.25, 1.0)
SCALES = (0.5, 3.0)
MIN_SYNTHETIC = 160
FOLDS = 5  # folds of the calibration images for the candidates' standard errors


@dataclass(frozen=True)
class MixSelection:
    """The chosen distillation-cue weight ``cos_weight`` (bank weight ``1 - cos_weight``), the image
    score's own ``score_cos_weight`` (``None``: the map's mix) and the table."""

    cos_weight: float
    candidates: list[dict[str, Any]]
    n_good: int
    n_synthetic: int
    kinds: tuple[str, ...]
    score_cos_weight: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "rule": "graded synthetic defects in calibration images; image AUROC + pixel AUROC + AUPRO; 1-SE",
            "cos_weight": self.cos_weight,
            "bank_weight": 1.0 - self.cos_weight,
            "score_cos_weight": self.score_cos_weight,
            "n_good": self.n_good,
            "n_synthetic": self.n_synthetic,
            "kinds": list(self.kinds),
            "candidates": self.candidates,
        }


def synthetic_defects(
    images: Sequence[np.ndarray],
    seed: int,
    kinds: Sequence[str] = SELECTION_DEFECTS,
    min_total: int = MIN_SYNTHETIC,
) -> list[tuple[np.ndarray, np.ndarray, int]]:
    """Graded synthetic defects: ``[(image, mask uint8, index of the image it is drawn in), ...]``, seeded.

    Each round draws one defect of each kind into every image (round-major, then image-major); rounds
    repeat until there are at least ``min_total`` defects. Each defect's contrast is drawn uniformly from
    :data:`STRENGTHS` and its size log-uniformly from :data:`SCALES` (``add_defect``'s ``strength`` and
    ``scale``), so the set spans faint to obvious and thin or small to large, as real defects do.
    """
    rng = np.random.default_rng(seed)
    n = len(images)
    rounds = max(1, math.ceil(min_total / max(1, n * len(kinds))))
    lo, hi = math.log(SCALES[0]), math.log(SCALES[1])
    out = []
    for r in range(rounds):
        for i, img in enumerate(images):
            donor = images[(i + 1 + r) % n] if n > 1 else None
            for kind in kinds:
                strength = float(rng.uniform(*STRENGTHS))
                scale = math.exp(rng.uniform(lo, hi))
                out.append((*add_defect(rng, img, kind, donor, strength=strength, scale=scale), i))
    return out


CueBatch = tuple[list[torch.Tensor] | None, list[torch.Tensor] | None, torch.Tensor]


@dataclass(frozen=True)
class CueSet:
    """Cached raw cues of a set of images: ``chunks`` per model input (the images' tiles when tiled,
    image-major), ``valid`` uint8 ``[N, 1, H, W]`` each image's own letterbox mask in its frame, and the
    tile ``grid`` (None: untiled, one input per image)."""

    chunks: list[CueBatch]
    valid: np.ndarray
    grid: TileGrid | None = None

    @classmethod
    def of(cls, chunks: list[CueBatch]) -> CueSet:
        """Untiled cues: the frames' valid masks are the inputs' own."""
        valid = np.concatenate([v.cpu().numpy() for *_, v in chunks]).astype(np.uint8)
        return cls(chunks, valid)

    def __len__(self) -> int:
        return int(self.valid.shape[0])


def model_frames(
    images: Sequence[np.ndarray], spec: PreprocessSpec, masks: Sequence[np.ndarray] | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """What the model sees of ``images``: ``(inputs uint8 [M, H, W, 3], input valid uint8 [M, 1, H, W],
    frame valid uint8 [N, 1, FH, FW], frame masks bool [N, FH, FW] or None)``; ``M == N`` untiled,
    ``N * tiles`` tiled. ``masks``: one per image in its own pixels (e.g. synthetic defects)."""
    batch, geometries = preprocess_batch(list(images), spec)
    inputs, valid = model_inputs(batch, geometries, spec)
    frame_valid = valid if not spec.tiled else valid_masks(geometries)
    framed = None
    if masks is not None:
        framed = np.stack([g.to_model(m) for g, m in zip(geometries, masks, strict=True)])
    return inputs, valid, frame_valid, framed


@torch.no_grad()
def cues_of(
    model: MASF, inputs: np.ndarray, valid: np.ndarray, device: torch.device, batch_size: int
) -> list[CueBatch]:
    """Raw cues of every enabled branch, whatever their fusion weights, for model inputs
    (:func:`model_frames`), batch by batch: ``[(cos per scale, bank per scale, valid), ...]``."""
    out = []
    for start in range(0, inputs.shape[0], batch_size):
        x = frames_to_tensor(inputs[start : start + batch_size], device)
        v = torch.from_numpy(valid[start : start + batch_size]).to(device)
        cos, bank = model.raw_cues(model.collect(x), all_cues=True)
        out.append((cos, bank, v))
    return out


@torch.no_grad()
def cue_batches(
    model: MASF,
    images: Sequence[np.ndarray],
    spec: PreprocessSpec,
    device: torch.device,
    batch_size: int,
    masks: Sequence[np.ndarray] | None = None,
) -> tuple[CueSet, np.ndarray | None]:
    """The :class:`CueSet` of ``images`` (cues of their tiles, when ``spec`` is tiled) and ``masks``
    brought into the images' frames (None without masks)."""
    inputs, valid, frame_valid, framed = model_frames(images, spec, masks)
    grid = spec.grid if spec.tiled else None
    return CueSet(cues_of(model, inputs, valid, device, batch_size), frame_valid, grid), framed


@dataclass(frozen=True)
class SharedInputs:
    """A set of images as the model sees them, with their teacher features and distillation cues computed
    once: models that share the teacher and the trained student and differ only in their bank (the bank
    designs of ``trainer/design.py``) then compute only their bank cues (:meth:`cues`).

    ``batches``: per batch of model inputs ``(teacher features per scale, distillation cue per scale or
    None, input valid mask)``, on the CPU (FP16 features above 2 GiB); ``frame_valid`` / ``grid`` /
    ``masks`` as :func:`cue_batches` gives them."""

    batches: list[tuple[list[torch.Tensor], list[torch.Tensor] | None, torch.Tensor]]
    frame_valid: np.ndarray
    grid: TileGrid | None
    masks: np.ndarray | None

    @classmethod
    @torch.no_grad()
    def compute(
        cls,
        model: MASF,
        images: Sequence[np.ndarray],
        spec: PreprocessSpec,
        device: torch.device,
        batch_size: int,
        masks: Sequence[np.ndarray] | None = None,
    ) -> SharedInputs:
        inputs, valid, frame_valid, framed = model_frames(images, spec, masks)
        dtype = feature_dtype(model, inputs.shape[0])
        raw: list[tuple[list[torch.Tensor], list[torch.Tensor] | None, torch.Tensor]] = []
        for start in range(0, inputs.shape[0], batch_size):
            feats = model.collect(frames_to_tensor(inputs[start : start + batch_size], device))
            cos = model.cos_maps(feats) if model.use_student else None
            v = torch.from_numpy(valid[start : start + batch_size])
            kept = [f.to("cpu", dtype) for f in feats]
            raw.append((kept, None if cos is None else [c.cpu() for c in cos], v))
        return cls(raw, frame_valid, spec.grid if spec.tiled else None, framed)

    @torch.no_grad()
    def cues(self, model: MASF) -> CueSet:
        """The :class:`CueSet` of these images under ``model`` (its teacher and student must be the ones
        the features and distillation cues were computed with; its bank cues are computed now)."""
        device = next(model.parameters()).device
        chunks: list[CueBatch] = []
        for feats, cos, v in self.batches:
            bank = model.bank_maps([f.to(device).float() for f in feats]) if model.use_bank else None
            chunks.append((None if cos is None else [c.to(device) for c in cos], bank, v.to(device)))
        return CueSet(chunks, self.frame_valid, self.grid)


@dataclass(frozen=True)
class SyntheticProbe:
    """The calibration fit images and their graded synthetic defects (:func:`synthetic_defects`), as
    :class:`SharedInputs`, with each defect's source image (for the paired folds) and, when known, its
    kind and measured contrast (:func:`~trainer.data.synthetic.defect_contrast`; the escape estimate,
    :mod:`trainer.escapes`)."""

    good: SharedInputs
    defective: SharedInputs
    sources: np.ndarray
    kinds: tuple[str, ...] | None = None
    contrasts: np.ndarray | None = None

    @property
    def masks(self) -> np.ndarray:
        assert self.defective.masks is not None
        return self.defective.masks

    def truth(self) -> ProbeTruth:
        """The probe's boxes, labels, strided truth masks and folds (:func:`probe_truth`)."""
        n_good = self.good.frame_valid.shape[0]
        return probe_truth(
            self.good.frame_valid, self.defective.frame_valid, self.masks, np.arange(n_good), self.sources
        )


@dataclass(frozen=True)
class ProbeTruth:
    """What every candidate of a synthetic probe is scored against: each image's placed-part box (strided;
    good images, then defective ones), the labels (0 good, 1 defective), each image's strided truth mask in
    its box (``None`` for the good ones) and its fold (:func:`fold_assignment`)."""

    boxes: tuple[list[tuple[slice, slice]], list[tuple[slice, slice]]]
    labels: np.ndarray
    truth: list[np.ndarray | None]
    fold: np.ndarray

    @property
    def n_good(self) -> int:
        return len(self.boxes[0])

    @property
    def n_bad(self) -> int:
        return len(self.boxes[1])


def probe_truth(
    valid_good: np.ndarray,
    valid_bad: np.ndarray,
    masks: np.ndarray,
    group_good: np.ndarray,
    group_bad: np.ndarray,
) -> ProbeTruth:
    """:class:`ProbeTruth` from the good and defective images' letterbox masks (``[N, 1, H, W]``), the
    defects' masks (bool ``[N_bad, H, W]``) and the calibration image each image comes from."""
    s = slice(None, None, _PIXEL_STRIDE)
    boxes = (_valid_boxes(valid_good), _valid_boxes(valid_bad))
    truth: list[np.ndarray | None] = [None] * len(boxes[0])
    truth += [m[s, s][box] for m, box in zip(masks, boxes[1], strict=True)]
    labels = np.r_[np.zeros(len(boxes[0])), np.ones(len(boxes[1]))]
    return ProbeTruth(boxes, labels, truth, fold_assignment(group_good, group_bad))


@torch.no_grad()
def synthetic_probe(
    model: MASF,
    fit_images: Sequence[np.ndarray],
    spec: PreprocessSpec,
    device: torch.device,
    seed: int,
    batch_size: int = 8,
    kinds: Sequence[str] = SELECTION_DEFECTS,
    min_total: int = MIN_SYNTHETIC,
) -> SyntheticProbe | None:
    """:class:`SyntheticProbe` of ``fit_images`` under ``model``'s teacher and student, the defects drawn
    with ``seed`` exactly as :func:`rank_on_synthetic` draws them (other ``kinds``: for diagnostics;
    ``min_total``: as in :func:`synthetic_defects`). ``None`` when no defect survives the resize."""
    defects = synthetic_defects(fit_images, seed, kinds, min_total)
    bad = SharedInputs.compute(
        model, [d[0] for d in defects], spec, device, batch_size, [d[1] for d in defects]
    )
    assert bad.masks is not None
    if not bad.masks[:, ::_PIXEL_STRIDE, ::_PIXEL_STRIDE].any():
        return None
    good = SharedInputs.compute(model, fit_images, spec, device, batch_size)
    sources = np.array([src for *_, src in defects])
    # synthetic_defects draws one of each kind per image and round, in this order
    drawn = tuple(kinds[j % len(kinds)] for j in range(len(defects)))
    contrasts = np.array([defect_contrast(img, fit_images[src], mask) for img, mask, src in defects])
    return SyntheticProbe(good, bad, sources, drawn, contrasts)


def valid_at(valid: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Letterbox mask ``[N, 1, H, W]`` -> bool ``[N, h, w]`` at a cue map's size: a cell is valid when at
    least half of the frame pixels it covers are real image pixels."""
    return F.interpolate(valid.float(), size=size, mode="area")[:, 0] >= 0.5


def set_cue_statistics(model: MASF, cues: list[CueBatch]) -> None:
    """Mean/std of each raw cue map over the real-image cells of the given (fit) images -> UGHF buffers.
    Letterbox padding is excluded: it is not part of the part, and a constant fill would shrink the std."""

    def stats(branch: int) -> list[tuple[float, float]] | None:
        chunks = [(c[branch], c[2]) for c in cues if c[branch] is not None]
        if not chunks:
            return None
        per_map: list[list[torch.Tensor]] = []
        for maps, valid in chunks:
            assert maps is not None
            for i, m in enumerate(maps):
                keep = valid_at(valid.to(m.device), (m.shape[-2], m.shape[-1]))
                if i == len(per_map):
                    per_map.append([])
                per_map[i].append(m[keep].flatten().float().cpu())
        values = [torch.cat(v) for v in per_map]
        return [(float(v.mean()), float(v.std())) for v in values]

    model.fusion.set_statistics(stats(0), stats(1))


def _valid_boxes(valid: np.ndarray) -> list[tuple[slice, slice]]:
    """Per image (``valid`` ``[N, 1, H, W]``), the (strided) bounding box of its valid pixels: the placed
    part, without letterbox padding (a rectangle)."""
    boxes = []
    for v in valid[:, 0, ::_PIXEL_STRIDE, ::_PIXEL_STRIDE] > 0:
        rows, cols = np.flatnonzero(v.any(1)), np.flatnonzero(v.any(0))
        boxes.append((slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)))
    return boxes


def _objective(
    scores: np.ndarray, labels: np.ndarray, maps: list[np.ndarray], truth: list[np.ndarray | None]
) -> dict[str, float]:
    px = pixel_metrics(maps, truth)
    image_auroc = roc_auc(scores, labels)
    return {
        "image_auroc": float(image_auroc),
        "pixel_auroc": float(px["pixel_auroc"]),
        "aupro": float(px["aupro"]),
        "objective": float(image_auroc + px["pixel_auroc"] + px["aupro"]),
    }


def fold_assignment(group_good: np.ndarray, group_bad: np.ndarray) -> np.ndarray:
    """Each image's fold (good images first, then the defective ones), from the calibration image it comes
    from (``group_*``): :data:`FOLDS` folds, fewer when there are fewer good images, so a synthetic defect
    always falls in the fold of the good image it was drawn into."""
    k = max(1, min(FOLDS, len(group_good)))
    return np.r_[np.asarray(group_good, dtype=np.int64) % k, np.asarray(group_bad, dtype=np.int64) % k]


def objective_by_fold(
    scores: np.ndarray,
    labels: np.ndarray,
    maps: list[np.ndarray],
    truth: list[np.ndarray | None],
    fold: np.ndarray,
) -> list[dict[str, float]]:
    """The selection's objective (:func:`_objective`) on each fold's images (``fold``: each image's fold,
    :func:`fold_assignment`), in fold order; empty folds are skipped."""
    out = []
    for f in range(int(fold.max()) + 1 if fold.size else 0):
        idx = np.flatnonzero(fold == f)
        if idx.size:
            out.append(_objective(scores[idx], labels[idx], [maps[i] for i in idx], [truth[i] for i in idx]))
    return out


def paired_se(diff: np.ndarray) -> float:
    """Standard error of the mean of paired per-fold differences (0 with fewer than two folds): what the
    one-standard-error rule compares a gap in the objective with."""
    diff = np.asarray(diff, dtype=float)
    return float(diff.std(ddof=1) / np.sqrt(diff.size)) if diff.size > 1 else 0.0


def within_one_se(rows: Sequence[dict[str, Any]], folds: np.ndarray) -> list[int]:
    """The candidates (indices) whose ``objective`` is within one standard error of the best's, the
    standard error being that of the paired per-fold differences (``folds``, ``[candidate, fold]``) to the
    best. Fills each row's ``se`` and ``within_1se`` (1.0 / 0.0)."""
    best = max(range(len(rows)), key=lambda i: rows[i]["objective"])
    for i, row in enumerate(rows):
        row["se"] = paired_se(folds[best] - folds[i])
        row["within_1se"] = float(rows[best]["objective"] - row["objective"] <= row["se"])
    return [i for i, r in enumerate(rows) if r["within_1se"]]


def _choose(rows: list[dict[str, float]], folds: np.ndarray) -> int:
    """The one-standard-error rule: among the candidates whose objective is within one standard error
    (over ``folds``, ``[candidate, fold]``) of the best, the one with the fewest cues (a single cue skips
    a branch at inference), then one mix for map and score (a second fusion only when it is measurably
    better), then the best objective, then the smaller distillation weights. Returns its index."""

    def key(i: int) -> tuple[bool, bool, float, float, float]:
        r = rows[i]
        a, s = r["cos_weight"], r["score_cos_weight"]
        split = a != s
        return (split or 0 < a < 1, split, -r["objective"], a, s)

    return min(within_one_se(rows, folds), key=key)


Candidate = float | tuple[float, float]


def _pair(c: Candidate) -> tuple[float, float]:
    """A candidate as ``(score mix, map mix)``: a number is one mix for both."""
    return (float(c[0]), float(c[1])) if isinstance(c, tuple) else (float(c), float(c))


def mix_candidates(grid: Sequence[float], split: bool) -> list[Candidate]:
    """The candidates :func:`rank_mixes` ranks: the ``grid``'s mixes, and with ``split`` every
    ``(score mix, map mix)`` pair of them as well."""
    if not split:
        return list(grid)
    return [*grid, *((s, a) for a in grid for s in grid if s != a)]


@torch.no_grad()
def rank_mixes(
    model: MASF,
    good: CueSet | list[CueBatch],
    defective: CueSet | list[CueBatch],
    masks: np.ndarray,
    candidates: Sequence[Candidate],
    groups: tuple[np.ndarray, np.ndarray] | None = None,
    fold_values: list[list[float]] | None = None,
) -> tuple[float, list[dict[str, float]]]:
    """Score each candidate on cached cues; returns the winner's ``cos_weight`` and the per-candidate
    table (each row's ``cos_weight`` is the map's mix, ``score_cos_weight`` the image score's, ``chosen``
    1.0 for the winner).

    A candidate is a ``cos_weight`` (one mix for the map and the score) or a ``(score mix, map mix)``
    pair (:func:`mix_candidates`). The image AUROC term depends on the score's mix only and the two pixel
    terms on the map's only, so each distinct mix is fused once and a pair's metrics (per fold as well)
    are its score mix's image term plus its map mix's pixel terms.

    The objective is the sum of the three headline metrics on the synthetic set: image AUROC (defective
    vs good images), pixel AUROC and AUPRO (FPR <= 0.3) over every 2nd pixel of the placed part. It is
    also computed on :data:`FOLDS` folds of the calibration images (``groups``: the calibration image
    each good and each defective image comes from; default: each its own), whose spread gives each
    candidate's standard error against the best; :func:`_choose` applies the one-standard-error rule.
    ``masks``: bool ``[N_defective, H, W]`` in the frame. The model's fusion weights are restored.
    ``fold_values``: when given, each candidate's per-fold objectives are appended to it.

    Tiled cue sets are scored as deployed: each image's tile maps stitched into its frame and its score
    the largest tile score (so a tile's padded border never counts in the maps).
    """
    fusion = model.fusion
    saved = (fusion.cos_weight, fusion.bank_weight)
    size = model.input_size
    s = slice(None, None, _PIXEL_STRIDE)
    good = good if isinstance(good, CueSet) else CueSet.of(good)
    defective = defective if isinstance(defective, CueSet) else CueSet.of(defective)
    n_good, n_bad = good.valid.shape[0], defective.valid.shape[0]
    group_good, group_bad = groups if groups is not None else (np.arange(n_good), np.arange(n_bad))
    pt = probe_truth(good.valid, defective.valid, masks, group_good, group_bad)
    (boxes_good, boxes_bad), truth, labels, fold = pt.boxes, pt.truth, pt.labels, pt.fold

    def fused(cues: CueSet, boxes: list[tuple[slice, slice]]) -> tuple[np.ndarray, list[np.ndarray]]:
        """Image scores ``[N]`` and each image's strided map of its placed part, for the current weights."""
        outs = [model.post(fusion(cos, bank, size), valid) for cos, bank, valid in cues.chunks]
        scores = torch.cat([o.pred_score for o in outs]).float().cpu().numpy()
        if cues.grid is None:
            maps = torch.cat([o.anomaly_map[:, 0, s, s] for o in outs]).float().cpu().numpy()
        else:
            tiles = torch.cat([o.anomaly_map[:, 0] for o in outs]).float().cpu().numpy()
            maps, scores = cues.grid.stitch(tiles)[:, s, s], cues.grid.reduce_scores(scores)
        return scores, [m[box] for m, box in zip(maps, boxes, strict=True)]

    pairs = [_pair(c) for c in candidates]
    whole: dict[float, dict[str, float]] = {}  # per distinct mix: its metrics, and per fold
    by_fold: dict[float, list[dict[str, float]]] = {}
    try:
        for a in sorted({m for p in pairs for m in p}):
            fusion.cos_weight, fusion.bank_weight = a, 1.0 - a
            (sg, mg), (sd, md) = fused(good, boxes_good), fused(defective, boxes_bad)
            scores, maps = np.r_[sg, sd], [*mg, *md]
            whole[a] = _objective(scores, labels, maps, truth)
            by_fold[a] = objective_by_fold(scores, labels, maps, truth, fold)
    finally:
        fusion.cos_weight, fusion.bank_weight = saved

    def combine(score: dict[str, float], mapped: dict[str, float]) -> dict[str, float]:
        im, px, pro = score["image_auroc"], mapped["pixel_auroc"], mapped["aupro"]
        return {"image_auroc": im, "pixel_auroc": px, "aupro": pro, "objective": float(im + px + pro)}

    rows, per_fold = [], []
    for sm, a in pairs:
        rows.append({"cos_weight": a, "score_cos_weight": sm, **combine(whole[sm], whole[a])})
        per_fold.append(
            [combine(ts, ta)["objective"] for ts, ta in zip(by_fold[sm], by_fold[a], strict=True)]
        )
    if fold_values is not None:
        fold_values.extend(per_fold)
    best = _choose(rows, np.asarray(per_fold))
    for i, row in enumerate(rows):
        row["chosen"] = float(i == best)
    return rows[best]["cos_weight"], rows


@dataclass(frozen=True)
class SyntheticRanking:
    """:func:`rank_on_synthetic`'s result: the chosen ``cos_weight``, every candidate's row, each
    candidate's per-fold objectives (same order as ``rows``) and the number of synthetic defects."""

    cos_weight: float
    rows: list[dict[str, float]]
    folds: list[list[float]]
    n_synthetic: int

    def _chosen(self) -> int:
        return next(i for i, r in enumerate(self.rows) if r["chosen"])

    def chosen_row(self) -> dict[str, float]:
        return self.rows[self._chosen()]

    def chosen_folds(self) -> list[float]:
        return self.folds[self._chosen()]

    @property
    def score_cos_weight(self) -> float | None:
        """The chosen image score's own mix, ``None`` when it is the map's."""
        row = self.chosen_row()
        return None if row["score_cos_weight"] == row["cos_weight"] else row["score_cos_weight"]

    def selection(self, n_good: int) -> MixSelection:
        """The :class:`MixSelection` of this ranking over ``n_good`` fit images."""
        # each row with its per-fold objectives, so the run alone shows what the 1-SE rule compared
        rows = [{**r, "folds": f} for r, f in zip(self.rows, self.folds, strict=True)]
        return MixSelection(
            self.cos_weight, rows, n_good, self.n_synthetic, SELECTION_DEFECTS, self.score_cos_weight
        )


@torch.no_grad()
def rank_on_synthetic(
    model: MASF,
    calib_images: Sequence[np.ndarray],
    spec: PreprocessSpec,
    device: torch.device,
    grid: Sequence[Candidate],
    seed: int,
    batch_size: int = 8,
    good_cues: CueSet | None = None,
    probe: SyntheticProbe | None = None,
    defect_cues: CueSet | None = None,
    min_total: int = MIN_SYNTHETIC,
) -> SyntheticRanking | None:
    """Rank the candidate mixes of ``grid`` for ``model`` (cue statistics must be set) on graded synthetic
    defects drawn into ``calib_images`` (:func:`rank_mixes`). ``None`` when the defects are too small to
    survive the resize. ``good_cues``: :func:`cue_batches` of ``calib_images``, when known.
    ``probe``: :func:`synthetic_probe` of ``calib_images`` with this ``seed`` under the model's teacher
    and student, when known (only the bank cues are computed then); ``defect_cues``: its defective
    images' cues under ``model`` (``probe.defective.cues(model)``), when known. ``min_total``: how many
    defects at least when the probe is made here (:func:`synthetic_defects`)."""
    if probe is None:
        probe = synthetic_probe(model, calib_images, spec, device, seed, batch_size, min_total=min_total)
        if probe is None:
            return None
    good = good_cues if good_cues is not None else probe.good.cues(model)
    groups = (np.arange(len(calib_images)), probe.sources)
    if defect_cues is None:
        defect_cues = probe.defective.cues(model)
    masks = probe.masks
    n_defects = len(probe.sources)
    folds: list[list[float]] = []
    chosen, rows = rank_mixes(model, good, defect_cues, masks, grid, groups, fold_values=folds)
    return SyntheticRanking(chosen, rows, folds, n_defects)


def model_mix(model: MASF) -> Candidate:
    """``model``'s own mix as a :func:`rank_mixes` candidate: its ``cos_weight``, or ``(score mix, map
    mix)`` when its image score has its own."""
    fusion = model.fusion
    weights = fusion.score_weights()
    return fusion.map_mix if weights is None else (weights[0], fusion.map_mix)


def mix_grid(model: MASF, candidates: Sequence[float]) -> list[float]:
    """The candidate ``cos_weight`` values of ``model``: ``candidates`` plus its configured mix."""
    return sorted({round(float(a), 6) for a in (*candidates, model.fusion.map_mix)})


def select_cue_mix(
    model: MASF,
    calib_images: Sequence[np.ndarray],
    spec: PreprocessSpec,
    device: torch.device,
    candidates: Sequence[float],
    seed: int,
    batch_size: int = 8,
    good_cues: CueSet | None = None,
    probe: SyntheticProbe | None = None,
    split: bool = False,
) -> MixSelection | None:
    """Choose ``cos_weight`` for ``model`` (cue statistics must be set), and with ``split`` the image
    score's own mix as well (:func:`mix_candidates`). ``None`` when the model has only one cue (nothing
    to mix). The model is left unchanged: the caller applies the choice. ``good_cues``:
    :func:`cue_batches` of ``calib_images``, when the caller already has them; ``probe``:
    :func:`synthetic_probe` of them with ``seed``, likewise."""
    if not (model.use_student and model.use_bank):
        return None
    grid = mix_candidates(mix_grid(model, candidates), split)
    ranking = rank_on_synthetic(model, calib_images, spec, device, grid, seed, batch_size, good_cues, probe)
    if ranking is None:
        return None  # defects too small to survive the resize: keep the configured mix
    return ranking.selection(len(calib_images))


@torch.no_grad()
def synthetic_objective(
    model: MASF,
    fit_images: Sequence[np.ndarray],
    spec: PreprocessSpec,
    device: torch.device,
    seed: int,
    batch_size: int = 8,
) -> dict[str, Any]:
    """The selection's objective for ``model`` as it is (its deployed cues and mix), on graded synthetic
    defects drawn into ``fit_images`` (the calibration images that set the cue statistics; never test
    images): ``{image_auroc, pixel_auroc, aupro, objective, folds: [objective per fold]}``.

    The same seed and images give the same defects for every model, so the objectives of candidate bank
    designs are paired and their fold differences give standard errors (the one-standard-error rule)."""
    ranking = rank_on_synthetic(model, fit_images, spec, device, [model_mix(model)], seed, batch_size)
    if ranking is None:
        raise ValueError("no synthetic defect survives the resize: there is no objective to compute")
    row = ranking.chosen_row()
    return {
        **{k: row[k] for k in ("image_auroc", "pixel_auroc", "aupro", "objective")},
        "folds": ranking.chosen_folds(),
    }
