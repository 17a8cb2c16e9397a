"""Choose the memory-bank design of a trained model for its part, without test images.

Which bank design finds defects best depends on the part (measured, ``benchmarks/RESULTS.md``, issue 11,
on synthetic defects in the calibration images): on bottle three per-scale banks with the spectral-anchored
prototype beat PatchCore's joint embedding; on magnetic tile (a grainy grayscale texture) the joint
embedding of scales 1 + 2 wins by about 7 standard errors. No single design wins on both, so
``bank.designs`` lists candidate designs and, after the student is trained:

1. every design gets its own bank(s) from the same training patches (the teacher and the trained student
   are shared, so only the bank branch differs; the teacher features and distillation cues of the fit
   images and their synthetic defects are computed once, :class:`~trainer.select.SharedInputs`);
2. on the calibration *fit* images (never the threshold images) each design gets its cue statistics,
   its cue mix (``fusion.select``, :mod:`trainer.select`) and the selection's objective, image AUROC +
   pixel AUROC + AUPRO, on graded synthetic defects: the same defects in the same images for every design
   (same seed), so the designs' per-fold objectives are paired;
3. one-standard-error rule: among the designs within one standard error of the best (the standard error
   of the paired per-fold differences), the one with the cheapest nearest-neighbour search wins
   (multiply-adds per model input: query patches x prototypes x channels, summed over banks), then the
   higher objective, then the earlier in the list.

The run keeps the chosen design only: its config holds that design's bank fields and no ``designs`` list,
so it reloads, exports and recalibrates as a single design. Every design's numbers are stored in the run
(``bank_selection``). Synthetic defects are not real ones: the rule prefers what separates *some* visible
anomalies from this part's normal variation.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from engines.preprocess import PreprocessSpec
from trainer.config import BankDesign, Config, config_from_dict, config_to_dict
from trainer.models.masf import MASF
from trainer.select import (
    CueSet,
    MixSelection,
    SyntheticProbe,
    mix_candidates,
    mix_grid,
    model_mix,
    rank_on_synthetic,
    set_cue_statistics,
    synthetic_probe,
    within_one_se,
)

__all__ = ["DesignChoice", "choose_design", "design_config", "knn_cost", "select_bank_design", "with_design"]

_logger = logging.getLogger(__name__)

BankBuilder = Callable[[MASF, Config], list[int]]


def design_config(cfg: Config, design: BankDesign, source: str = "bank.designs") -> Config:
    """``cfg`` with ``design``'s bank fields and no design list, validated as a whole."""
    bank = replace(cfg.bank, **design.changes(), designs=[])
    return config_from_dict(config_to_dict(replace(cfg, bank=bank)), f"{source}[{design.name}]")


def knn_cost(model: MASF) -> int:
    """Nearest-neighbour multiply-adds per model input: query patches x prototypes x channels, summed over
    the model's banks (a joint bank queries at the finest chosen scale)."""
    total = 0
    for scale, bank in zip(model.fusion.bank_scales, model.bank_list(), strict=True):
        h, w = model.map_sizes[scale]
        total += h * w * int(bank.bank.shape[0]) * int(bank.bank.shape[1])
    return total


def with_design(trained: MASF, cfg: Config) -> MASF:
    """A model with the bank design of ``cfg`` (empty banks) that shares ``trained``'s teacher, student and
    position-cue modules and copies its learned scale weights."""
    model = MASF(trained.teacher, cfg, trained.input_size)
    if trained.use_student:
        model.sdms, model.students = trained.sdms, trained.students
    model.position, model.position_weight = trained.position, trained.position_weight  # fitted once
    with torch.no_grad():
        model.fusion.log_var.copy_(trained.fusion.log_var.detach().cpu())
    device = next(trained.parameters()).device
    return model.to(device).eval()


def choose_design(rows: list[dict[str, Any]], folds: np.ndarray) -> int:
    """The one-standard-error rule over designs: ``rows`` (``objective``, ``knn_cost``), ``folds``
    ``[design, fold]`` paired per-fold objectives. Among the designs within one standard error of the
    best, the cheapest kNN, then the higher objective, then the earlier. Fills ``se`` / ``within_1se``."""
    fine = within_one_se(rows, folds)
    return min(fine, key=lambda i: (rows[i]["knn_cost"], -rows[i]["objective"], i))


@dataclass(frozen=True)
class DesignChoice:
    """What :func:`select_bank_design` decided: the chosen model (banks filled, cue statistics set, its
    cue mix applied), its config (the design's bank fields, no design list), the cue-mix selection of the
    chosen design (``None``: one cue, nothing mixed) and every design's row."""

    model: MASF
    config: Config
    name: str
    mix: MixSelection | None
    candidates: list[dict[str, Any]]
    n_good: int
    n_synthetic: int
    # the fit images and their synthetic defects as the designs were scored on them, and the chosen
    # design's cues of both (good, defective), for the image-score choice that follows
    # (trainer/score_choice.py); not saved
    probe: SyntheticProbe | None = None
    cues: tuple[CueSet, CueSet] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "rule": "graded synthetic defects in calibration images; image AUROC + pixel AUROC + AUPRO; "
            "1-SE, then the cheapest kNN",
            "chosen": self.name,
            "n_good": self.n_good,
            "n_synthetic": self.n_synthetic,
            "candidates": self.candidates,
        }


@torch.no_grad()
def select_bank_design(
    trained: MASF,
    cfg: Config,
    fit_images: Sequence[np.ndarray],
    spec: PreprocessSpec,
    device: torch.device,
    build_banks: BankBuilder,
) -> DesignChoice | None:
    """Build every design of ``cfg.bank.designs`` on top of ``trained`` (``build_banks(model, config)``
    fills a model's banks from the training patches), score each on synthetic defects in ``fit_images``
    and keep the winner (module docstring). ``None`` when the synthetic defects do not survive the
    resize (the caller keeps the first design)."""
    rows: list[dict[str, Any]] = []
    folds: list[list[float]] = []
    built: list[tuple[MASF, Config, MixSelection | None, tuple[CueSet, CueSet]]] = []
    bs = cfg.train.batch_size
    # the teacher features and distillation cues of the fit images and their synthetic defects, once
    probe = synthetic_probe(trained, fit_images, spec, device, cfg.seed, bs)
    if probe is None:
        return None
    n_synthetic = len(probe.sources)
    for design in cfg.bank.designs:
        dcfg = design_config(cfg, design)
        model = with_design(trained, dcfg)
        sizes = build_banks(model, dcfg)
        good = probe.good.cues(model)
        set_cue_statistics(model, good.chunks)
        mixing = model.use_student and dcfg.fusion.select == "synthetic"
        if mixing:
            grid = mix_candidates(mix_grid(model, dcfg.fusion.candidates), dcfg.fusion.split_score)
        else:
            grid = [model_mix(model)]
        bad = probe.defective.cues(model)
        ranking = rank_on_synthetic(model, fit_images, spec, device, grid, cfg.seed, bs, good, probe, bad)
        assert ranking is not None
        a, sa = ranking.cos_weight, ranking.score_cos_weight
        model.fusion.cos_weight, model.fusion.bank_weight = a, 1.0 - a
        model.fusion.score_cos_weight = sa
        fusion = replace(dcfg.fusion, cos_weight=a, bank_weight=1.0 - a, score_cos_weight=sa)
        dcfg = replace(dcfg, fusion=fusion)
        mix = ranking.selection(len(fit_images)) if mixing else None
        row = ranking.chosen_row()
        rows.append(
            {
                "name": design.name,
                "changes": design.changes(),
                "cos_weight": a,
                "score_cos_weight": sa,
                **{k: row[k] for k in ("image_auroc", "pixel_auroc", "aupro", "objective")},
                "bank_sizes": sizes,
                "knn_cost": knn_cost(model),
            }
        )
        folds.append(ranking.chosen_folds())
        built.append((model, dcfg, mix, (good, bad)))
        del good, bad
        _logger.info(
            "bank design %s: objective %.4f (cue mix %.2f / %.2f), bank sizes %s",
            design.name,
            row["objective"],
            a,
            1 - a,
            sizes,
        )
    i = choose_design(rows, np.asarray(folds))
    for r, f in zip(rows, folds, strict=True):
        r["folds"] = f
    model, dcfg, mix, cues = built[i]
    del built
    _logger.info("bank design %s chosen on synthetic defects (%d designs)", rows[i]["name"], len(rows))
    return DesignChoice(model, dcfg, rows[i]["name"], mix, rows, len(fit_images), n_synthetic, probe, cues)
