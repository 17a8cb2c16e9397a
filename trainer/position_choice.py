"""The position cue's three fitted parts (``position.enabled``; :mod:`trainer.models.masf.position`).

1. **Gaussians** from the training images (:func:`fit_position_gaussians`), as the bank's prototypes are.
2. **Statistics**: the distance's mean and spread over the calibration fit images' part
   (:func:`set_position_statistics`), as the other cues' are.
3. **Weight** in the image score's map, chosen among ``position.candidates`` on the same graded synthetic
   defects in the fit images that choose the cue mix and the image score (:func:`select_position_weight`):
   the selection's objective with paired folds and the one-standard-error rule: among the weights within
   one standard error of the best, the one nearest the configured ``position.weight`` (0 is always a
   candidate: the cue is then not computed). So a part keeps the configured weight unless its own fit
   images say another is better beyond noise. With ``position.require_gain`` the rule leans to 0 instead:
   a part pays for the cue at inference only where a weight above 0 beats 0 by more than one standard
   error. Only the image score changes, so only the image AUROC term can move.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from trainer.models.masf import MASF
from trainer.models.masf.position import CellMoments
from trainer.select import (
    _PIXEL_STRIDE,
    CueSet,
    SharedInputs,
    SyntheticProbe,
    _objective,
    objective_by_fold,
    within_one_se,
)

_logger = logging.getLogger(__name__)


@torch.no_grad()
def fit_position_gaussians(
    model: MASF, feats: list[torch.Tensor], valid: np.ndarray, batch_size: int = 32
) -> None:
    """Fill ``model.position``'s Gaussians from the training images' teacher features (``feats``, one
    ``[N, C, h, w]`` per scale, on the CPU) and their letterbox masks (``valid`` uint8 ``[N, 1, H, W]``)."""
    cue = model.position
    assert cue is not None, "position.enabled is off"
    device = cue.mean.device
    acc = CellMoments(cue.grid * cue.grid, cue.mean.shape[1])
    for s in range(0, feats[0].shape[0], batch_size):
        f = [t[s : s + batch_size].to(device).float() for t in feats[1:3]]
        x, cell, cells = cue.embed(f, torch.from_numpy(valid[s : s + batch_size]).to(device))
        keep = cells.reshape(cell.shape) > 0  # the part's positions only
        acc.add(x[keep].cpu(), cell[keep].cpu())
    mean, factor = acc.gaussians()
    cue.mean, cue.factor = mean.to(device), factor.to(device)
    _logger.info(
        "position cue: %d Gaussians of %d channels from %d training images",
        mean.shape[0],
        mean.shape[1],
        feats[0].shape[0],
    )


@torch.no_grad()
def position_maps(model: MASF, inputs: SharedInputs) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per batch of ``inputs``: the position cue's raw distances and valid cells (``[n, 1, h, w]`` each)."""
    cue = model.position
    assert cue is not None
    device = cue.mean.device
    return [
        cue.raw([f.to(device).float() for f in feats[1:3]], v.to(device)) for feats, _, v in inputs.batches
    ]


def set_position_statistics(model: MASF, good: SharedInputs) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The distance's mean and standard deviation over the valid cells of the fit images ``good``; returns
    their :func:`position_maps` (for :func:`select_position_weight`, which scores the same images)."""
    cue = model.position
    assert cue is not None
    maps = position_maps(model, good)
    d = torch.cat([dist[cells > 0].double().cpu() for dist, cells in maps])
    std = float(d.std()) if d.numel() > 1 else 0.0
    cue.stats = torch.tensor([float(d.mean()), std if std > 0 else 1.0], device=cue.stats.device)
    _logger.info("position cue: distance %.3f +- %.3f over the fit images' parts", *cue.stats.tolist())
    return maps


@dataclass(frozen=True)
class PositionSelection:
    """:func:`select_position_weight`'s result: the chosen weight and every candidate's row."""

    weight: float
    rows: list[dict[str, Any]]
    n_good: int
    n_synthetic: int
    require_gain: bool = False

    def to_dict(self) -> dict[str, Any]:
        nearest = "0 (the cue only where it measurably helps)" if self.require_gain else "the configured one"
        return {
            "rule": "graded synthetic defects in calibration fit images; image AUROC + pixel AUROC + AUPRO; "
            f"1-SE, the weight nearest {nearest}",
            "weight": self.weight,
            "n_good": self.n_good,
            "n_synthetic": self.n_synthetic,
            "rows": self.rows,
        }


def choose_weight(rows: list[dict[str, Any]], folds: np.ndarray, default: float) -> int:
    """The one-standard-error rule over weights (``rows``: ``weight``, ``objective``; ``folds``
    ``[weight, fold]``): among the weights within one standard error of the best, the nearest to
    ``default``, then the smaller. Fills each row's ``se`` / ``within_1se``."""
    fine = within_one_se(rows, folds)
    return min(fine, key=lambda i: (abs(rows[i]["weight"] - default), rows[i]["weight"]))


@torch.no_grad()
def select_position_weight(
    model: MASF,
    probe: SyntheticProbe,
    candidates: Sequence[float],
    default: float,
    cues: tuple[CueSet, CueSet] | None = None,
    good_maps: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
    require_gain: bool = False,
) -> PositionSelection:
    """Choose the position cue's weight in the image score's map for ``model`` as it is (cue statistics,
    mix, image score and the position cue's statistics set) among ``candidates`` and 0, on ``probe``
    (``cues``: its good and defective cues under ``model``, when the caller has them; ``good_maps``: the
    good images' :func:`position_maps`, likewise), by :func:`choose_weight` with the configured weight
    ``default``, or with 0 when ``require_gain`` (a weight above 0 only where it beats 0 by more than one
    standard error: the cue costs time at inference); applies it to ``model``."""
    cue = model.position
    assert cue is not None
    good, bad = cues if cues is not None else (probe.good.cues(model), probe.defective.cues(model))
    if good.grid is not None:
        raise ValueError("the position cue is not used on tiled parts")
    fusion, size, post = model.fusion, model.input_size, model.post
    score_w = fusion.score_weights()
    s = slice(None, None, _PIXEL_STRIDE)
    per_set = []
    if good_maps is None:
        good_maps = position_maps(model, probe.good)
    sets = ((good, good_maps), (bad, position_maps(model, probe.defective)))
    for cue_set, raw in sets:
        chunks = []
        for (cos, bank, v), (dist, cells) in zip(cue_set.chunks, raw, strict=True):
            fused = fusion(cos, bank, size)
            scored = fused if score_w is None else fusion(cos, bank, size, score_w)
            chunks.append((fused, scored, cue.standardised(dist, cells, size), v))
        per_set.append(chunks)
    pt = probe.truth()
    boxes, truth, labels, fold = pt.boxes, pt.truth, pt.labels, pt.fold
    maps: list[np.ndarray] = []  # the anomaly map does not depend on the weight
    for chunks, b in zip(per_set, boxes, strict=True):
        am = torch.cat([post(f, v).anomaly_map[:, 0, s, s] for f, _, _, v in chunks]).float().cpu().numpy()
        maps.extend(a[box] for a, box in zip(am, b, strict=True))
    rows, folds = [], []
    for w in sorted({float(c) for c in (*candidates, default, 0.0)}):
        scores = np.concatenate(
            [
                torch.cat([post(f, v, (1 - w) * sc + w * p).pred_score for f, sc, p, v in chunks])
                .cpu()
                .numpy()
                for chunks in per_set
            ]
        )
        row: dict[str, Any] = {"weight": w, **_objective(scores, labels, maps, truth)}
        folds.append([f["objective"] for f in objective_by_fold(scores, labels, maps, truth, fold)])
        rows.append(row)
    chosen = choose_weight(rows, np.asarray(folds), 0.0 if require_gain else default)
    for i, (row, f) in enumerate(zip(rows, folds, strict=True)):
        row["chosen"], row["folds"] = float(i == chosen), f
    weight = rows[chosen]["weight"]
    model.position_weight = weight
    _logger.info("position cue weight %.2f in the image score (chosen on synthetic defects)", weight)
    return PositionSelection(weight, rows, pt.n_good, pt.n_bad, require_gain)
