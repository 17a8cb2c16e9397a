"""Tests for trainer.score_choice: the image score (largest pixel or top-1 % mean) and the map's smoothing
chosen per part."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import tiny_config
from engine_support import ExportedBundle, exported_bundle

from trainer.runs import load_run
from trainer.score_choice import (
    TOPK_LIMIT,
    baseline,
    choose_pair,
    eligible,
    select_pair,
    select_score_reduce,
    select_smoothing,
)
from trainer.select import CueSet

H = W = 32


class _FakeModel:
    """What ``select_score_reduce`` uses of a MASF: ``fusion``, ``post`` and ``input_size``."""

    def __init__(self) -> None:
        from trainer.models.masf.ughf import UGHF, MapPostprocess

        self.fusion = UGHF(1, cos_weight=0.0, bank_weight=1.0, learned=False)
        self.post = MapPostprocess(sigma=0.0, reduce="max", topk_fraction=0.05)
        self.input_size = (H, W)


class _Inputs:
    """Stands for a :class:`~trainer.select.SharedInputs`: fixed bank cues for any model."""

    def __init__(self, maps: torch.Tensor, masks: np.ndarray | None = None) -> None:
        self.set = CueSet.of([(None, [maps], torch.ones(maps.shape[0], 1, H, W))])
        self.masks = masks

    def cues(self, model: object) -> CueSet:
        return self.set


class _Probe:
    def __init__(self, good: _Inputs, defective: _Inputs, sources: np.ndarray) -> None:
        self.good, self.defective, self.sources = good, defective, sources

    @property
    def masks(self) -> np.ndarray:
        assert self.defective.masks is not None
        return self.defective.masks


def _probe(hot_good: float, defect: str, rng: np.random.Generator, n: int = 20) -> _Probe:
    """Full-resolution bank maps: mild noise everywhere; each good map has one hot pixel of ``hot_good``
    at a random place; each defective map has a ``defect`` ("area": a 6x6 region raised by 1.5, or
    "pixel": one pixel raised by 3)."""
    good = torch.from_numpy(rng.normal(0, 0.3, (n, H, W)).astype(np.float32))
    for g in good:
        y, x = rng.integers(0, H, 2)
        g[y, x] += hot_good
    bad = torch.from_numpy(rng.normal(0, 0.3, (2 * n, H, W)).astype(np.float32))
    masks = np.zeros((2 * n, H, W), dtype=bool)
    for i, b in enumerate(bad):
        y, x = rng.integers(4, H - 10, 2)
        if defect == "area":
            b[y : y + 6, x : x + 6] += 1.5
            masks[i, y : y + 6, x : x + 6] = True
        else:
            b[y, x] += 3.0
            masks[i, y, x] = True
    sources = np.arange(2 * n) % n
    return _Probe(_Inputs(good), _Inputs(bad, masks), sources)


def _choose(select: Any, probe: _Probe, candidates: list[Any]) -> Any:
    """``select`` (a selection of this module) run on ``probe`` for a fake model, which it must leave as
    it was."""
    model = _FakeModel()
    chosen = select(
        model, [np.zeros((H, W, 3), np.uint8)] * 20, None, torch.device("cpu"), candidates, 0, probe=probe
    )
    assert chosen is not None
    assert (model.post.reduce, model.post.sigma) == ("max", 0.0)  # the model is left as it was
    return chosen


def _select(probe: _Probe, candidates: list[str]) -> tuple[str, list[dict[str, object]]]:
    chosen = _choose(select_score_reduce, probe, candidates)
    return chosen.reduce, chosen.candidates


def test_grainy_good_parts_and_area_defects_choose_the_top_pixels_mean() -> None:
    # a good part's largest pixel is a lone hot grain; defects are areas: the mean of the top 5 % sees them
    reduce, rows = _select(_probe(4.0, "area", np.random.default_rng(0)), ["max", "topk_mean"])
    assert reduce == "topk_mean"
    by = {r["reduce"]: r for r in rows}
    assert by["topk_mean"]["image_auroc"] > by["max"]["image_auroc"] + 0.2  # type: ignore[operator]
    # the maps are the same: only the image term differs
    assert by["topk_mean"]["pixel_auroc"] == by["max"]["pixel_auroc"]
    assert by["max"]["within_1se"] == 0.0 and len(by["max"]["folds"]) == 5  # type: ignore[arg-type]


def test_single_pixel_defects_keep_the_largest_pixel() -> None:
    # no hot grains in good parts; each defect is one pixel: the top-5 % mean dilutes it
    reduce, rows = _select(_probe(0.0, "pixel", np.random.default_rng(1)), ["max", "topk_mean"])
    assert reduce == "max"
    by = {r["reduce"]: r for r in rows}
    assert by["max"]["image_auroc"] > by["topk_mean"]["image_auroc"]  # type: ignore[operator]


@pytest.mark.parametrize("order", [["max", "topk_mean"], ["topk_mean", "max"]])
def test_a_tie_keeps_the_earlier_candidate(order: list[str]) -> None:
    # obvious area defects, no hot grains: both scores separate every defect (image AUROC 1.0 each)
    probe = _probe(0.0, "area", np.random.default_rng(2))
    for b in probe.defective.set.chunks[0][1]:  # type: ignore[union-attr]
        b += 10.0 * torch.from_numpy(probe.masks.astype(np.float32))
    reduce, rows = _select(probe, order)
    assert [r["image_auroc"] for r in rows] == [1.0, 1.0]
    assert reduce == order[0]


class _Spent(_Inputs):
    """A probe's inputs whose cues must not be recomputed (the caller passed them)."""

    def cues(self, model: object) -> CueSet:
        raise AssertionError("the cues were recomputed although the caller gave them")


def test_given_cues_are_used_as_they_are() -> None:
    rng = np.random.default_rng(0)
    probe = _probe(4.0, "area", rng)
    reduce, rows = _select(probe, ["max", "topk_mean"])
    spent = _Probe(_Spent(torch.zeros(1, H, W)), _Spent(torch.zeros(1, H, W), probe.masks), probe.sources)
    chosen = select_score_reduce(
        _FakeModel(),  # type: ignore[arg-type]
        [np.zeros((H, W, 3), np.uint8)] * 20,
        None,  # type: ignore[arg-type]
        torch.device("cpu"),
        ["max", "topk_mean"],
        0,
        probe=spent,  # type: ignore[arg-type]
        cues=(probe.good.set, probe.defective.set),
    )
    assert chosen is not None and chosen.reduce == reduce
    assert [r["objective"] for r in chosen.candidates] == [r["objective"] for r in rows]


def _smooth(probe: _Probe, sigmas: list[float]) -> tuple[float, list[dict[str, object]]]:
    chosen = _choose(select_smoothing, probe, sigmas)
    assert [r["sigma"] for r in chosen.candidates] == sigmas
    return chosen.sigma, chosen.candidates


def _faint_areas(rng: np.random.Generator, n: int = 20) -> _Probe:
    """Pixel noise of SD 0.3 everywhere (a grainy texture); each defect an 8x8 area raised by only 0.35,
    inside the noise of single pixels but far above it once averaged over a few pixels."""
    good = torch.from_numpy(rng.normal(0, 0.3, (n, H, W)).astype(np.float32))
    bad = torch.from_numpy(rng.normal(0, 0.3, (2 * n, H, W)).astype(np.float32))
    masks = np.zeros((2 * n, H, W), dtype=bool)
    for i, b in enumerate(bad):
        y, x = rng.integers(6, H - 14, 2)
        b[y : y + 8, x : x + 8] += 0.35
        masks[i, y : y + 8, x : x + 8] = True
    return _Probe(_Inputs(good), _Inputs(bad, masks), np.arange(2 * n) % n)


def test_faint_area_defects_in_a_grainy_texture_choose_the_wider_smoothing() -> None:
    sigma, rows = _smooth(_faint_areas(np.random.default_rng(3)), [0.0, 2.0])
    assert sigma == 2.0
    by = {r["sigma"]: r for r in rows}
    assert by[2.0]["image_auroc"] > by[0.0]["image_auroc"] + 0.1  # type: ignore[operator]
    assert by[2.0]["pixel_auroc"] > by[0.0]["pixel_auroc"] + 0.1  # type: ignore[operator]  # the map changes too
    assert by[0.0]["within_1se"] == 0.0 and len(by[0.0]["folds"]) == 5  # type: ignore[arg-type]


def test_single_pixel_defects_choose_the_narrower_smoothing() -> None:
    # no grain; each defect one pixel raised by 3: a blur of sigma 2 spreads it to a fraction of that
    sigma, rows = _smooth(_probe(0.0, "pixel", np.random.default_rng(1)), [2.0, 0.0])
    assert sigma == 0.0
    by = {r["sigma"]: r for r in rows}
    assert by[0.0]["image_auroc"] > by[2.0]["image_auroc"]  # type: ignore[operator]


def test_one_smoothing_candidate_is_no_choice() -> None:
    probe = _probe(0.0, "pixel", np.random.default_rng(1))
    args = ([np.zeros((H, W, 3), np.uint8)] * 20, None, torch.device("cpu"))
    assert select_smoothing(_FakeModel(), *args, [4.0], 0, probe=probe) is None  # type: ignore[arg-type]


_PAIRS = [(4.0, "max"), (4.0, "topk_mean"), (2.0, "max"), (2.0, "topk_mean")]


def _pair_rows(gaps: list[list[float]]) -> tuple[list[dict[str, Any]], np.ndarray]:
    """The four pairs' rows: each pair's folds are the best pair's (the last) less its per-fold gaps."""
    best = np.array([2.0, 2.1, 1.9, 2.0, 2.0])
    folds = np.array([best - np.array(g) for g in gaps] + [best])
    rows = [
        {"sigma": s, "reduce": r, "objective": float(f.mean())}
        for (s, r), f in zip(_PAIRS, folds, strict=True)
    ]
    return rows, folds


def test_the_pair_rule_takes_the_fewest_changes_within_one_se_then_the_higher_objective() -> None:
    far = [0.3, 0.3, 0.3, 0.3, 0.31]  # behind by 0.302, SE 0.002: measurably worse
    near_lower = [0.0, 0.1, -0.1, 0.05, 0.05]  # behind by 0.02, SE 0.034: within
    near_higher = [0.0, 0.05, -0.05, 0.03, 0.02]  # behind by 0.01, SE 0.019: within
    rows, folds = _pair_rows([far, near_lower, near_higher])
    # both one-change pairs are within one SE of the best (two changes): the higher objective of the
    # two wins; taking the earliest listed would give (4, topk_mean), taking the best (2, topk_mean)
    assert choose_pair(rows, folds) == 2
    assert [r["within_1se"] for r in rows] == [0.0, 1.0, 1.0, 1.0]
    # the first pair within one SE is kept although three pairs score higher
    rows, folds = _pair_rows([[0.0, 0.1, -0.1, 0.05, 0.0], near_lower, near_higher])
    assert choose_pair(rows, folds) == 0
    # only the best is within one SE: it is taken, two changes and all
    rows, folds = _pair_rows([far, far, [0.2, 0.21, 0.2, 0.2, 0.2]])
    assert choose_pair(rows, folds) == 3


def test_the_pairs_are_ranked_on_the_rows_each_choice_alone_would_give() -> None:
    """Every (sigma, score) pair's row is the one the smoothing or the image-score choice computes for
    that setting on the same defects; the chosen pair is the pair rule's over them."""
    probe = _probe(4.0, "area", np.random.default_rng(4))
    args = ([np.zeros((H, W, 3), np.uint8)] * 20, None, torch.device("cpu"))
    model = _FakeModel()
    chosen = select_pair(model, *args, [0.0, 2.0], ["max", "topk_mean"], 0, probe=probe)  # type: ignore[arg-type]
    assert chosen is not None
    assert (model.post.reduce, model.post.sigma) == ("max", 0.0)  # the model is left as it was
    rows = chosen.candidates
    assert [(r["sigma"], r["reduce"]) for r in rows] == [
        (0.0, "max"),
        (0.0, "topk_mean"),
        (2.0, "max"),
        (2.0, "topk_mean"),
    ]
    by = {(r["sigma"], r["reduce"]): r["objective"] for r in rows}
    smooth = select_smoothing(model, *args, [0.0, 2.0], 0, probe=probe)  # type: ignore[arg-type]
    assert smooth is not None
    assert [r["objective"] for r in smooth.candidates] == [by[0.0, "max"], by[2.0, "max"]]
    for sigma in (0.0, 2.0):
        model.post = model.post.with_sigma(sigma)
        alone = select_score_reduce(model, *args, ["max", "topk_mean"], 0, probe=probe)  # type: ignore[arg-type]
        assert alone is not None
        assert [r["objective"] for r in alone.candidates] == [by[sigma, "max"], by[sigma, "topk_mean"]]
    folds = np.array([r["folds"] for r in rows])
    assert (chosen.sigma, chosen.reduce) == _pairs_of(rows)[choose_pair([dict(r) for r in rows], folds)]
    assert chosen.to_dict()["sigma"] == chosen.sigma and "fewest changes" in chosen.to_dict()["rule"]
    # a grainy texture (a hot grain in every good map) with area defects: not the unsmoothed largest pixel
    assert (chosen.sigma, chosen.reduce) != (0.0, "max")
    assert select_pair(model, *args, [4.0], ["max"], 0, probe=probe) is None  # type: ignore[arg-type]


def _pairs_of(rows: list[dict[str, Any]]) -> list[tuple[float, str]]:
    return [(r["sigma"], r["reduce"]) for r in rows]


def test_the_baseline_takes_the_first_score_and_smoothing_candidates() -> None:
    cfg = tiny_config(
        score={"select": "synthetic", "reduce": "topk_mean", "sigma": 2.0, "sigma_candidates": [4.0, 2.0]}
    )
    assert (baseline(cfg).score.reduce, baseline(cfg).score.sigma) == ("max", 4.0)
    plain = tiny_config(score={"select": "synthetic", "reduce": "topk_mean", "sigma": 2.0})
    assert (baseline(plain).score.reduce, baseline(plain).score.sigma) == ("max", 2.0)  # no list: kept
    off = tiny_config(
        score={"select": "none", "reduce": "topk_mean", "sigma": 2.0, "sigma_candidates": [4.0]}
    )
    assert baseline(off) is off


def test_topk_mean_is_only_a_candidate_under_tensorrts_topk_limit() -> None:
    assert eligible(["max", "topk_mean"], (256, 256), 0.01) == ["max", "topk_mean"]  # k = 655
    big = (1024, 1024)  # k = 10,486 at 1 %
    assert round(0.01 * big[0] * big[1]) >= TOPK_LIMIT
    assert eligible(["max", "topk_mean"], big, 0.01) == ["max"]
    assert eligible(["max", "topk_mean"], big, 0.003) == ["max", "topk_mean"]  # k = 3,146


@pytest.fixture(scope="module")
def chosen_run(synth_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from trainer.train import fit

    torch.set_num_threads(2)
    out = tmp_path_factory.mktemp("score_choice")
    fit(
        tiny_config(score={"select": "synthetic", "sigma_candidates": [4.0, 2.0]}),
        synth_data,
        out,
        progress=False,
    )
    return out


def test_fit_stores_the_image_score_choice_and_the_run_reloads_with_it(chosen_run: Path) -> None:
    doc = json.loads((chosen_run / "run.json").read_text())
    sel = doc["score_selection"]
    assert [r["reduce"] for r in sel["candidates"]] == ["max", "topk_mean"]
    assert sel["n_good"] == doc["calibration"]["n_fit_images"]  # the fit images only
    assert sel["n_synthetic"] == doc["fusion_selection"]["n_synthetic"]  # the same synthetic defects
    fine = [r["reduce"] for r in sel["candidates"] if r["within_1se"] == 1.0]
    assert sel["reduce"] == fine[0]
    model, info = load_run(chosen_run)
    assert info.config.score.reduce == sel["reduce"] == model.post.reduce
    assert info.config.score.select == "synthetic"


def test_fit_stores_the_smoothing_choice_before_the_image_score_and_reloads_with_it(chosen_run: Path) -> None:
    doc = json.loads((chosen_run / "run.json").read_text())
    sel = doc["smoothing_selection"]
    assert [r["sigma"] for r in sel["candidates"]] == [4.0, 2.0]
    assert sel["n_good"] == doc["calibration"]["n_fit_images"]
    assert sel["n_synthetic"] == doc["fusion_selection"]["n_synthetic"]
    fine = [r["sigma"] for r in sel["candidates"] if r["within_1se"] == 1.0]
    assert sel["sigma"] == fine[0]
    # the image score was chosen on the chosen smoothing: its row for the chosen score is that row
    chosen = next(r for r in sel["candidates"] if r["sigma"] == sel["sigma"])
    score_rows = {r["reduce"]: r for r in doc["score_selection"]["candidates"]}
    assert score_rows["max"]["objective"] == pytest.approx(chosen["objective"], abs=1e-9)
    model, info = load_run(chosen_run)
    assert info.config.score.sigma == sel["sigma"] == model.post.sigma
    assert info.config.score.sigma_candidates == [4.0, 2.0]


def _mix_choices(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, float]]:
    """The (image score, sigma) the model holds at each cue-mix choice from now on (filled as they run)."""
    import trainer.train

    seen: list[tuple[str, float]] = []
    real = trainer.train.select_cue_mix

    def spy(model, *args, **kwargs):  # type: ignore[no-untyped-def]
        seen.append((model.post.reduce, model.post.sigma))
        return real(model, *args, **kwargs)

    monkeypatch.setattr(trainer.train, "select_cue_mix", spy)
    return seen


def test_recalibration_chooses_the_mix_with_the_baseline_score_as_the_fit_did(
    chosen_run: Path, synth_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A saved run's config holds the chosen image score; recalibrating it must choose the cue mix with
    the first candidate (``max``), as the fit did, not with the saved score, and so repeat the fit."""
    from dataclasses import replace

    import trainer.train
    from trainer.models.masf.ughf import MapPostprocess

    seen = _mix_choices(monkeypatch)
    doc = json.loads((chosen_run / "run.json").read_text())
    model, info = load_run(chosen_run)
    # whatever the tiny run chose, make the saved score and smoothing the others than the baseline's
    model.post = MapPostprocess(2.0, "topk_mean", model.post.topk_fraction)
    info.config = replace(info.config, score=replace(info.config.score, reduce="topk_mean", sigma=2.0))
    again = trainer.train.recalibrate(model, info, synth_data)
    assert seen == [("max", 4.0)]
    assert again.config.fusion.cos_weight == doc["fusion_selection"]["cos_weight"]
    assert again.config.score.reduce == doc["score_selection"]["reduce"] == model.post.reduce
    assert again.config.score.sigma == doc["smoothing_selection"]["sigma"] == model.post.sigma
    assert again.meta["score_selection"]["candidates"] == doc["score_selection"]["candidates"]
    assert again.meta["smoothing_selection"]["candidates"] == doc["smoothing_selection"]["candidates"]


def test_a_joint_choice_is_recorded_with_every_pair_and_the_run_reloads_with_it(
    chosen_run: Path, synth_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``score.joint``: the recalibration of the saved run ranks the four pairs (the mix still chosen with
    the first pair), whose rows are the fit's one-after-the-other rows where they overlap; the chosen
    pair is the run's score and smoothing, saved and reloaded."""
    from dataclasses import replace

    import trainer.train
    from trainer.runs import save_run

    seen = _mix_choices(monkeypatch)
    doc = json.loads((chosen_run / "run.json").read_text())
    model, info = load_run(chosen_run)
    info.config = replace(info.config, score=replace(info.config.score, joint=True))
    again = trainer.train.recalibrate(model, info, synth_data)
    assert seen == [("max", 4.0)]
    sel = again.meta["score_selection"]
    assert again.meta["smoothing_selection"] is None
    rows = {(r["sigma"], r["reduce"]): r["objective"] for r in sel["candidates"]}
    assert list(rows) == [(4.0, "max"), (4.0, "topk_mean"), (2.0, "max"), (2.0, "topk_mean")]
    for r in doc["smoothing_selection"]["candidates"]:
        assert rows[r["sigma"], "max"] == r["objective"]
    sigma = doc["smoothing_selection"]["sigma"]
    for r in doc["score_selection"]["candidates"]:
        assert rows[sigma, r["reduce"]] == r["objective"]
    assert (again.config.score.sigma, again.config.score.reduce) == (sel["sigma"], sel["reduce"])
    assert (model.post.sigma, model.post.reduce) == (sel["sigma"], sel["reduce"])
    assert sel["n_synthetic"] == doc["fusion_selection"]["n_synthetic"]
    save_run(tmp_path / "joint", model, again)
    reloaded, info2 = load_run(tmp_path / "joint")
    assert (reloaded.post.sigma, reloaded.post.reduce) == (sel["sigma"], sel["reduce"])
    assert info2.config.score.joint is True


def test_both_choices_share_one_probe_when_the_mix_is_not_chosen(
    chosen_run: Path, synth_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without a cue-mix selection nothing else draws the synthetic defects: they are drawn once for the
    smoothing and the image score (and the escape estimate), not once per choice."""
    from dataclasses import replace

    import trainer.score_choice
    import trainer.train

    calls: list[str] = []

    def counting(where: str, real: Any) -> Any:
        def probe(*args: Any, **kwargs: Any) -> Any:
            calls.append(where)
            return real(*args, **kwargs)

        return probe

    monkeypatch.setattr(trainer.train, "synthetic_probe", counting("train", trainer.train.synthetic_probe))
    monkeypatch.setattr(
        trainer.score_choice, "synthetic_probe", counting("choice", trainer.score_choice.synthetic_probe)
    )
    model, info = load_run(chosen_run)
    info.config = replace(info.config, fusion=replace(info.config.fusion, select="none"))
    again = trainer.train.recalibrate(model, info, synth_data)
    assert calls == ["train"]
    assert again.meta["smoothing_selection"] is not None and again.meta["score_selection"] is not None
    assert again.meta["synthetic_escapes"] is not None


def test_runs_without_the_choice_keep_the_configured_score(trained_run: Path) -> None:
    doc = json.loads((trained_run / "run.json").read_text())
    assert doc["score_selection"] is None and doc["smoothing_selection"] is None
    _, info = load_run(trained_run)
    assert (info.config.score.reduce, info.config.score.sigma) == ("max", 4.0)


@pytest.mark.slow
def test_a_top_pixels_mean_run_exports_with_parity(
    synth_data: Path, exported: ExportedBundle, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The exported graph computes the top-1 % mean (one more ONNX TopK than the same run's graph with
    the largest pixel) as torch does: ``masf-engine export`` checks parity of maps, scores and verdicts
    on the calibration images and fails otherwise; TopK passes the TensorRT 10 op check."""
    import onnx

    from engines.bundle import Bundle
    from trainer.train import fit

    torch.set_num_threads(2)
    run = tmp_path_factory.mktemp("topk_run")
    cfg = tiny_config(fusion={"select": "none"}, score={"reduce": "topk_mean"})
    fit(cfg, synth_data, run, progress=False)
    bundle = Bundle.open(exported_bundle(run, tmp_path_factory).path)
    rec = bundle.manifest["export"]
    assert rec["parity"]["passed"] is True and rec["parity"]["verdict_mismatches"] == 0
    assert rec["tensorrt10"]["issues"] == []

    def topks(path: Path) -> int:
        return sum(n.op_type == "TopK" for n in onnx.load(str(path)).graph.node)

    assert topks(bundle.onnx_path) == topks(Bundle.open(exported.path).onnx_path) + 1
